"""Reconstruction evaluation: the paper's rFID protocol (TITOK.md 6.1) and the image-similarity metrics.

    stats = real_feature_stats(val, 50_000, inception=inc, info=info)      # once per dataset (cacheable)
    save_feature_stats(stats, "val50k_stats.npz")                          # ... and load_feature_stats(path)
    out = evaluate_reconstruction(tok, val, num_images=50_000, inception=inc, info=info, real_stats=stats)

Per image: encode, decode (a stage-1-form tokenizer's proxy codes through the MaskGIT-VQGAN teacher), then
run.to_uint8 (clamp, round to 1/255, x255 and truncate, as the reference); the reals take the same conversion,
which is exact for images read from uint8 files. Inception features of both (torch-fidelity's network; the
reference runs it in float64: InceptionFeatures(dtype="float64")), streamed into float64 sums.

Returned keys (bench.tracking.METRICS): rfid (Frechet distance of the pool features; scipy sqrtm as the
reference, or fid_method="eigh"), rfid_is (Inception Score of the reconstructions over all images as one split,
as the reference's evaluator accumulates it), psnr and ssim (means over images of the uint8 pair, back in
[0, 1]; psnr is inf when every reconstruction is exact), lpips (only with an LPIPS network), codebook_usage and
codebook_entropy (VQ tokenizers only), rfid_num_images (the images read), eval_skipped_images (unreadable ones).

Sharding: every rank takes a contiguous slice of the images; feature sums, metric sums and code histograms are
all-reduced, logits gathered in image order; the distance is computed on the main rank and broadcast. The
result equals a single-process run up to float summation order.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

import models
from bench.core.dist import DistInfo, all_reduce_sum, gather_tensors
from bench.eval.inception import InceptionFeatures
from bench.eval.metrics import (
    FeatureStats,
    code_histogram,
    fid_from_stats,
    inception_score,
    psnr,
    ssim,
    usage_and_entropy,
)
from bench.eval.npz import load_reference_batch, save_reference_batch
from bench.perceptual import LPIPS

from .run import (
    SINGLE_PROCESS,
    SetupError,
    check_image_size,
    decode_tokens,
    empty_rows,
    eval_batches,
    on_main,
    to_uint8,
)

POOL_DIM = 2048
LOGITS_DIM = 1008


def real_feature_stats(dataset: Dataset, num_images: int, *, inception: InceptionFeatures, batch_size: int = 64,
                       info: DistInfo = SINGLE_PROCESS, num_workers: int = 0) -> FeatureStats:
    """Pool-feature sums of the first `num_images` real images (uint8 as the reconstructions), summed over
    ranks: what `evaluate_reconstruction(real_stats=...)` takes, so a sweep computes it once."""
    stats = FeatureStats(POOL_DIM, info.device)
    for images, _ in eval_batches(dataset, num_images, batch_size, info, num_workers, desc="real features"):
        stats.update(inception(to_uint8(images)).pool)
    return stats.all_reduce()


def save_feature_stats(stats: FeatureStats, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write mean and covariance as a statistics-only reference batch (mu, sigma; ADM layout) with the image
    count in the metadata. Describe the images and the Inception weights in `metadata`."""
    mu, sigma = stats.mean_cov()
    return save_reference_batch(path, mu=mu, sigma=sigma, metadata={**(metadata or {}), "num_images": stats.count})


def load_feature_stats(path: str | os.PathLike) -> tuple[FeatureStats, dict]:
    """(statistics, metadata) from `save_feature_stats`; the sums are rebuilt from mean, covariance and count."""
    ref = load_reference_batch(path, images=False)
    n = ref.metadata.get("num_images")
    if n is None:
        raise SetupError(f"{path} has no image count in its metadata: not written by save_feature_stats")
    mu, sigma = torch.from_numpy(ref.mu), torch.from_numpy(ref.sigma)
    stats = FeatureStats(mu.numel())
    stats.n += n
    stats.sum += n * mu
    stats.outer += (n - 1) * sigma + n * torch.outer(mu, mu)
    return stats, ref.metadata


@torch.no_grad()
def evaluate_reconstruction(tokenizer: models.TiTok, dataset: Dataset, *, num_images: int,
                            inception: InceptionFeatures, batch_size: int = 64, info: DistInfo = SINGLE_PROCESS,
                            teacher: models.MaskGITVQGAN | None = None, real_stats: FeatureStats | None = None,
                            lpips: LPIPS | None = None, fid_method: str = "sqrtm", num_workers: int = 0) -> dict:
    """rFID and friends of `tokenizer` on the first `num_images` images of `dataset` (see the module docstring).
    Models are moved to info.device. Every rank returns the same dict."""
    check_image_size(dataset, tokenizer.config.image_size, "the tokenizer")
    dev = info.device
    tokenizer = tokenizer.to(dev).eval()
    if teacher is not None:
        teacher = teacher.to(dev).eval()
    if lpips is not None:
        lpips = lpips.to(dev)
    fake = FeatureStats(POOL_DIM, dev)
    real = FeatureStats(POOL_DIM, dev) if real_stats is None else None
    sums = torch.zeros(3, dtype=torch.float64, device=dev)  # psnr, ssim, lpips summed over images
    codes = torch.zeros(tokenizer.config.codebook_size if tokenizer.is_vq else 0, dtype=torch.long, device=dev)
    logits = [empty_rows(LOGITS_DIM, dev)]
    for images, _ in eval_batches(dataset, num_images, batch_size, info, num_workers, desc="reconstruction"):
        tokens = tokenizer.encode(images)
        real_u8, fake_u8 = to_uint8(images), to_uint8(decode_tokens(tokenizer, tokens, teacher))
        feats = inception(fake_u8)
        fake.update(feats.pool)
        logits.append(feats.logits.to(dev))
        if real is not None:
            real.update(inception(real_u8).pool)
        x, y = real_u8.double() / 255, fake_u8.double() / 255
        sums[0] += psnr(x, y).sum()
        sums[1] += ssim(x, y).sum()
        if lpips is not None:
            sums[2] += lpips(x.float(), y.float()).double().sum()
        if tokenizer.is_vq:
            codes += code_histogram(tokens, codes.numel())
    fake.all_reduce()
    real = real_stats if real is None else real.all_reduce()
    if real.count != fake.count:  # after the pass: unreadable images are skipped in both
        raise SetupError(f"real_stats hold {real.count} images, the evaluation read {fake.count}: "
                         "compute them from the same images (the same num_images)")
    all_reduce_sum(sums)
    all_reduce_sum(codes)
    all_logits = gather_tensors(torch.cat(logits))

    def compute() -> dict:
        n = fake.count
        out = {"rfid": fid_from_stats(real, fake, method=fid_method),
               "rfid_is": inception_score(all_logits, splits=1)[0],
               "psnr": sums[0].item() / n, "ssim": sums[1].item() / n}
        if lpips is not None:
            out["lpips"] = sums[2].item() / n
        if tokenizer.is_vq:
            out["codebook_usage"], out["codebook_entropy"] = usage_and_entropy(codes.cpu())
        out["rfid_num_images"], out["eval_skipped_images"] = n, num_images - n
        return out

    return on_main(compute, info)
