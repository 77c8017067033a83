"""What every evaluation run shares: pixels to uint8, tokens to pixels, sharded passes over a dataset, results
computed once on the main rank. (Loading the models to evaluate is bench/core/loading.py.)

The runs themselves:
    bench/eval/reconstruction.py  evaluate_reconstruction, real_feature_stats  (rFID, IS, PSNR, SSIM, LPIPS, codebook)
    bench/eval/sample.py          class-balanced, per-sample-seeded sampling to ADM .npz files
    bench/eval/generation.py      evaluate_generation, make_reference_batch  (ADM: gFID, IS, sFID, precision/recall)
    bench/eval/probe.py           linear_probe  (frozen encoder features)
    python -m bench.eval          all of them from the command line
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from tqdm import tqdm

import models
from bench.core.dist import DistInfo
from bench.core.loading import SetupError
from bench.data import make_eval_loader

SINGLE_PROCESS = DistInfo()  # the default `info`: one process on the CPU
T = TypeVar("T")


# ---- pixels --------------------------------------------------------------------------------------------------
def to_uint8(images: torch.Tensor, round_first: bool = True) -> torch.Tensor:
    """[0, 1] images -> uint8, same layout. Clamped, then (round_first) rounded to a multiple of 1/255 and x255
    truncated: the reference's two steps for reconstructions (in float32 equal to round(255 x)); without
    round_first only x255 and truncation, as the reference's sampling script does."""
    x = images.float().clamp(0.0, 1.0)
    if round_first:
        x = torch.round(x * 255.0) / 255.0
    return (x * 255.0).to(torch.uint8)


def decode_tokens(
    tokenizer: models.TiTok, tokens: torch.Tensor, teacher: models.MaskGITVQGAN | None = None
) -> torch.Tensor:
    """Tokens -> images in [0, 1]; a two-stage tokenizer in stage-1 form predicts proxy codes, which the
    MaskGIT-VQGAN teacher decodes (the reference's stage-1 reconstruction)."""
    if tokenizer.outputs_pixels:
        return tokenizer.decode(tokens)
    if teacher is None:
        raise SetupError(
            "this tokenizer is in stage-1 form (proxy-code head, no pixel decoder): its images come "
            "from the MaskGIT-VQGAN teacher; pass teacher=load_eval_teacher(tokenizer, ...)"
        )
    return teacher.decode(tokenizer.decode_proxy_codes(tokens))


# ---- sharded passes ------------------------------------------------------------------------------------------
def progress(iterable, info: DistInfo, desc: str):
    """tqdm on the main rank (quiet when not a TTY), nothing on the others."""
    return tqdm(iterable, desc=desc, disable=None if info.is_main else True, leave=False)


class _Exact(Dataset):
    """The first `n` samples of a dataset, each its own: an unreadable file is None (left out of its batch), never
    another image in its place (the folder dataset's `read`; a dataset without files has no unreadable ones)."""

    def __init__(self, dataset: Dataset, n: int):
        self.dataset, self.n = dataset, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        read = getattr(self.dataset, "read", None)
        return self.dataset[index] if read is None else read(index)


def eval_batches(
    dataset: Dataset, num_images: int, batch_size: int, info: DistInfo, num_workers: int = 0, desc: str = "eval"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's (images, labels) batches, on its device, of the first `num_images` images: every image is
    seen by exactly one rank (bench.data.eval_shard: contiguous slices in rank order). Unreadable images are
    skipped (and reported by the dataset), so what a run counts is the images it read: num_images minus the
    skipped, which the results report as eval_skipped_images."""
    if not 1 <= num_images <= len(dataset):
        raise SetupError(f"num_images={num_images}, but the dataset holds {len(dataset)} images")
    loader = make_eval_loader(
        _Exact(dataset, num_images),
        batch_size=batch_size,
        rank=info.rank,
        world_size=info.world_size,
        num_workers=num_workers,
        pin_memory=info.device.type == "cuda",
    )
    for batch in progress(loader, info, desc):
        if batch is not None:
            images, labels = batch
            yield images.to(info.device, non_blocking=True), labels.to(info.device, non_blocking=True)


def check_image_size(dataset: Dataset, image_size: int, what: str) -> None:
    size = getattr(dataset, "image_size", None)
    if size is not None and size != image_size:
        raise SetupError(
            f"the dataset gives {size} px images, but {what} works at {image_size} px; "
            f"build the dataset with image_size={image_size}"
        )


def on_main(fn: Callable[[], T], info: DistInfo) -> T:
    """fn() on the main rank only (a Frechet distance, a classifier fit), its result broadcast to every rank.
    An exception on the main rank is raised on every rank rather than leaving the others waiting."""
    result: object = None
    if info.is_main:
        try:
            result = fn()
        except Exception as err:  # re-raised below, on every rank
            result = err
    if info.distributed and dist.is_initialized():
        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    if isinstance(result, Exception):
        raise result
    return result


def empty_rows(dim: int, device: torch.device) -> torch.Tensor:
    """A [0, dim] float64 tensor: what a rank with no images contributes to a gather."""
    return torch.zeros(0, dim, dtype=torch.float64, device=device)
