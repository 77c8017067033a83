"""What every evaluation run shares: pixels to uint8, tokens to pixels, sharded passes over a dataset, results
computed once on the main rank, and loading the models to evaluate (released, own checkpoints, stand-ins).

The runs themselves:
    bench/eval/reconstruction.py  evaluate_reconstruction, real_feature_stats  (rFID, IS, PSNR, SSIM, LPIPS, codebook)
    bench/sample.py               class-balanced, per-sample-seeded sampling to ADM .npz files
    bench/eval/generation.py      evaluate_generation, make_reference_batch  (ADM: gFID, IS, sFID, precision/recall)
    bench/eval/probe.py           linear_probe  (frozen encoder features)
    python -m bench.eval          all of them from the command line

    tok = load_model("TiTok-L-32", "tokenizer", allow_random=False)   # Loaded(model, random, label)
    teacher = load_eval_teacher(tok.model, allow_random=False)         # None unless the tokenizer is in stage-1 form

A stand-in (allow_random, weights missing) is built from a fixed seed, and a checkpoint of ours that was trained
with a stand-in (metadata `random.<net>=true`) counts as one too: `Loaded.random` says so, and every number it
produces must be tagged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

import models
from bench import weights
from bench.data import make_eval_loader
from bench.train.dist import DistInfo
from bench.train.recipes import TeacherConfig
from bench.train.tokenizer import load_teacher

STANDIN_SEED = 0
SINGLE_PROCESS = DistInfo()  # the default `info`: one process on the CPU
T = TypeVar("T")


class EvalSetupError(ValueError):
    """Unusable evaluation input (a model, a file, a setting): the message says which and what to do."""


# ---- pixels --------------------------------------------------------------------------------------------------
def to_uint8(images: torch.Tensor, round_first: bool = True) -> torch.Tensor:
    """[0, 1] images -> uint8, same layout. Clamped, then (round_first) rounded to a multiple of 1/255 and x255
    truncated: the reference's two steps for reconstructions (in float32 equal to round(255 x)); without
    round_first only x255 and truncation, as the reference's sampling script does."""
    x = images.float().clamp(0.0, 1.0)
    if round_first:
        x = torch.round(x * 255.0) / 255.0
    return (x * 255.0).to(torch.uint8)


def decode_tokens(tokenizer: models.TiTok, tokens: torch.Tensor,
                  teacher: models.MaskGITVQGAN | None = None) -> torch.Tensor:
    """Tokens -> images in [0, 1]; a two-stage tokenizer in stage-1 form predicts proxy codes, which the
    MaskGIT-VQGAN teacher decodes (the reference's stage-1 reconstruction)."""
    if tokenizer.outputs_pixels:
        return tokenizer.decode(tokens)
    if teacher is None:
        raise EvalSetupError("this tokenizer is in stage-1 form (proxy-code head, no pixel decoder): its images come "
                             "from the MaskGIT-VQGAN teacher; pass teacher=load_eval_teacher(tokenizer, ...)")
    return teacher.decode(tokenizer.decode_proxy_codes(tokens))


# ---- sharded passes ------------------------------------------------------------------------------------------
def progress(iterable, info: DistInfo, desc: str):
    """tqdm on the main rank (quiet when not a TTY), nothing on the others."""
    return tqdm(iterable, desc=desc, disable=None if info.is_main else True, leave=False)


def eval_batches(dataset: Dataset, num_images: int, batch_size: int, info: DistInfo, num_workers: int = 0,
                 desc: str = "eval") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's (images, labels) batches, on its device, of the first `num_images` images: every image is
    seen by exactly one rank (bench.data.eval_shard: contiguous slices in rank order)."""
    if not 1 <= num_images <= len(dataset):
        raise EvalSetupError(f"num_images={num_images}, but the dataset holds {len(dataset)} images")
    loader = make_eval_loader(Subset(dataset, range(num_images)), batch_size=batch_size, rank=info.rank,
                              world_size=info.world_size, num_workers=num_workers,
                              pin_memory=info.device.type == "cuda")
    for images, labels in progress(loader, info, desc):
        yield images.to(info.device, non_blocking=True), labels.to(info.device, non_blocking=True)


def check_image_size(dataset: Dataset, image_size: int, what: str) -> None:
    size = getattr(dataset, "image_size", None)
    if size is not None and size != image_size:
        raise EvalSetupError(f"the dataset gives {size} px images, but {what} works at {image_size} px; "
                             f"build the dataset with image_size={image_size}")


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


# ---- models --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Loaded:
    model: nn.Module
    random: bool  # a seeded random stand-in, or our checkpoint trained with one: tag every number
    label: str  # variant name or checkpoint name, for tags and sample file names


def _checkpoint_label(path: Path) -> str:
    # our stages all write model.safetensors: name it by its folders (cell and stage) instead
    if path.is_file() and path.stem == "model":
        return f"{path.parent.parent.name}-{path.parent.name}"
    return path.stem if path.is_file() else path.name


def _trained_with_standin(path: Path) -> bool:
    if not (path.is_file() and path.suffix == ".safetensors"):
        return False
    meta = models.checkpoints.read_metadata(path)
    return any(k.startswith("random.") and v == "true" for k, v in meta.items())


def _standin(name: str, overrides: dict) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(STANDIN_SEED)
        return models.build(name, **overrides)


def load_model(source: str, kind: str, allow_random: bool, standin_overrides: dict | None = None) -> Loaded:
    """A frozen model of `kind` ("tokenizer" or "generator") from a checkpoint path (ours, a hub-style folder,
    an official file) or a registered name. A name with released weights loads them from the weights cache
    (bench.weights: MissingWeightsError says where to put them); with allow_random, a missing file or a name
    without released weights gives a seeded stand-in built with `standin_overrides`."""
    path = Path(source).expanduser()
    if path.exists():
        model, random, label = models.from_pretrained(path), _trained_with_standin(path), _checkpoint_label(path)
    else:
        try:
            variant = models.resolve(source)
        except ValueError as err:
            raise EvalSetupError(f"{source!r} is not a file, a folder or a model name: {err}") from None
        if variant.kind != kind:
            raise EvalSetupError(f"{source} is a {variant.kind}, not a {kind}")
        resolved = weights.Resolved(None, True)
        if source in weights.registry():
            resolved = weights.resolve(source, allow_random)
        elif not allow_random:
            raise EvalSetupError(f"{source} has no released weights: pass a checkpoint file, or "
                                 "--allow-random-weights (allow_random=True) for an untrained, tagged stand-in")
        if resolved.path is not None:
            model = models.from_pretrained(resolved.path, variant=source)
        else:
            model = _standin(source, standin_overrides or {})
        random, label = resolved.random, source
    if getattr(model, "kind", None) != kind:
        raise EvalSetupError(f"{source} holds a {getattr(model, 'kind', type(model).__name__)}, not a {kind}")
    return Loaded(model.eval().requires_grad_(False), random, label)


def load_generator(source: str, tokenizer: models.TiTok, allow_random: bool) -> Loaded:
    """A MaskGIT generator that fits `tokenizer` (VQ, same K and codebook); a stand-in is sized to it."""
    if not tokenizer.is_vq:
        raise EvalSetupError("a VAE tokenizer has no discrete tokens: MaskGIT generation needs a VQ tokenizer")
    t = tokenizer.config
    loaded = load_model(source, "generator", allow_random,
                        {"num_tokens": t.num_latent_tokens, "codebook_size": t.codebook_size})
    g = loaded.model.config
    if (g.num_tokens, g.codebook_size) != (t.num_latent_tokens, t.codebook_size):
        raise EvalSetupError(f"generator {source} makes {g.num_tokens} tokens of {g.codebook_size} codes, but the "
                             f"tokenizer has {t.num_latent_tokens} tokens of {t.codebook_size} codes")
    return loaded


def load_eval_teacher(tokenizer: models.TiTok, source: str = weights.TEACHER,
                      allow_random: bool = False) -> Loaded | None:
    """The MaskGIT-VQGAN that decodes a stage-1-form tokenizer's proxy codes (None when it makes pixels itself);
    a stand-in takes the architecture in the tokenizer's config."""
    if tokenizer.outputs_pixels:
        return None
    cfg = TeacherConfig(source=source, overrides=dataclasses.asdict(tokenizer.config.vqgan))
    teacher, random = load_teacher(cfg, allow_random)
    want = tokenizer.config.vqgan
    if (teacher.config.codebook_size, teacher.config.downsample_factor) != (want.codebook_size,
                                                                           want.downsample_factor):
        raise EvalSetupError(f"teacher {source} has {teacher.config.codebook_size} codes at f"
                             f"{teacher.config.downsample_factor}, the tokenizer predicts {want.codebook_size} "
                             f"codes at f{want.downsample_factor}")
    return Loaded(teacher.requires_grad_(False), random,
                  source if source == weights.TEACHER else _checkpoint_label(Path(source)))
