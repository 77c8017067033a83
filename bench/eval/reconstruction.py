"""Reconstruction evaluation: the paper's rFID protocol (docs/reference.md, rFID) and the image-similarity metrics.

    stats = real_feature_stats(val, 50_000, inception=inc, info=info)      # once per dataset (cacheable)
    save_feature_stats(stats, "val50k_stats.npz")                          # ... and load_feature_stats(path)
    stats, pool = real_features(val, 50_000, inception=inc, info=info)     # and the per-image features
    save_pool_features(pool, pool_features_path("val50k_stats.npz"))      # (the bootstrap's real side)
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
result equals a single-process run up to float summation order. Whether the real images' per-image features come
from `real_pool_cache` is decided on rank 0 and broadcast: it decides which gathers every rank joins, and ranks
on a shared filesystem may see that file differently.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

import models
from bench.core.dist import DistInfo, all_reduce_sum, gather_tensors, main_rank_says
from bench.core.io import atomic_file
from bench.eval.inception import InceptionFeatures
from bench.eval.intervals import bootstrap_fid, bootstrap_inception_score, bootstrap_interval, bootstrap_mean
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
from bench.tracking import interval_keys

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


def real_feature_stats(
    dataset: Dataset,
    num_images: int,
    *,
    inception: InceptionFeatures,
    batch_size: int = 64,
    info: DistInfo = SINGLE_PROCESS,
    num_workers: int = 0,
) -> FeatureStats:
    """Pool-feature sums of the first `num_images` real images (uint8 as the reconstructions), summed over
    ranks: what `evaluate_reconstruction(real_stats=...)` takes, so a sweep computes it once."""
    return _real_features(dataset, num_images, inception, batch_size, info, num_workers, keep_pool=False)[0]


def real_features(
    dataset: Dataset,
    num_images: int,
    *,
    inception: InceptionFeatures,
    batch_size: int = 64,
    info: DistInfo = SINGLE_PROCESS,
    num_workers: int = 0,
) -> tuple[FeatureStats, torch.Tensor]:
    """`real_feature_stats` and, from the same pass, the per-image pool features [n, 2048] (float64, in image
    order, on every rank): what `evaluate_reconstruction(real_pool_cache=...)` reads for its rFID interval."""
    return _real_features(dataset, num_images, inception, batch_size, info, num_workers, keep_pool=True)


def _real_features(
    dataset: Dataset,
    num_images: int,
    inception: InceptionFeatures,
    batch_size: int,
    info: DistInfo,
    num_workers: int,
    keep_pool: bool,
) -> tuple[FeatureStats, torch.Tensor | None]:
    stats = FeatureStats(POOL_DIM, info.device)
    pools = [empty_rows(POOL_DIM, info.device)]
    for images, _ in eval_batches(dataset, num_images, batch_size, info, num_workers, desc="real features"):
        pool = inception(to_uint8(images)).pool
        stats.update(pool)
        if keep_pool:
            pools.append(pool.to(info.device, torch.float64))
    return stats.all_reduce(), gather_tensors(torch.cat(pools)) if keep_pool else None


def pool_features_path(stats_path: str | os.PathLike) -> Path:
    """Where the per-image pool features of a statistics file go: beside it, `<stem>.pool.npy`."""
    stats_path = Path(stats_path)
    return stats_path.with_name(f"{stats_path.stem}.pool.npy")


def save_pool_features(pool: torch.Tensor, path: str | os.PathLike) -> Path | None:
    """Write per-image pool features (atomically) for `evaluate_reconstruction(real_pool_cache=...)`; None where the
    folder is read-only (the evaluation then computes them in its own pass)."""
    import numpy as np

    try:
        with atomic_file(Path(path)) as f:
            np.save(f, pool.cpu().numpy())
    except OSError:
        return None
    return Path(path)


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
def evaluate_reconstruction(
    tokenizer: models.TiTok,
    dataset: Dataset,
    *,
    num_images: int,
    inception: InceptionFeatures,
    batch_size: int = 64,
    info: DistInfo = SINGLE_PROCESS,
    teacher: models.MaskGITVQGAN | None = None,
    real_stats: FeatureStats | None = None,
    lpips: LPIPS | None = None,
    fid_method: str = "sqrtm",
    num_workers: int = 0,
    bootstrap: int = 0,
    real_pool_cache: str | os.PathLike | None = None,
    gallery: int = 0,
    token_positions: bool = False,
) -> dict:
    """rFID and friends of `tokenizer` on the first `num_images` images of `dataset` (see the module docstring).
    Models are moved to info.device. Every rank returns the same dict.

    bootstrap > 0: `<metric>_lo` / `<metric>_hi` for rfid, rfid_is, psnr, ssim, lpips: the 95% interval over that
    many resamples of the images (bench.eval.intervals.bootstrap_*; rFID resamples the real and reconstructed
    features with the same indices, so it needs the real images' per-image pool features: read from
    `real_pool_cache` when rank 0 finds that file holding them, else computed in this pass and written there).
    gallery > 0: `gallery` holds the first that many images and their reconstructions, uint8 [2, n, 3, H, W].
    token_positions (VQ tokenizers): `token_positions` holds, per token position, the distinct codes used and the
    entropy (bits) of its codes over the images."""
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
    per_image = [torch.zeros(0, 3, dtype=torch.float64, device=dev)]  # psnr, ssim, lpips of each image
    pools, real_pools, shown = [empty_rows(POOL_DIM, dev)], [empty_rows(POOL_DIM, dev)], []
    # rank 0 reads the cache and every rank follows its word: the gathers below depend on it
    cached = _load_pool_cache(real_pool_cache, num_images) if bootstrap > 0 and info.is_main else None
    have_cache = main_rank_says(cached is not None, dev) if bootstrap > 0 else False
    need_real_pool = bootstrap > 0 and not have_cache
    positions = None
    seen = 0  # images this rank has read: the first `gallery` of rank 0's slice are the first of the set
    for images, _ in eval_batches(dataset, num_images, batch_size, info, num_workers, desc="reconstruction"):
        tokens = tokenizer.encode(images)
        real_u8, fake_u8 = to_uint8(images), to_uint8(decode_tokens(tokenizer, tokens, teacher))
        feats = inception(fake_u8)
        fake.update(feats.pool)
        logits.append(feats.logits.to(dev))
        if real is not None or need_real_pool:
            real_pool = inception(real_u8).pool
            if real is not None:
                real.update(real_pool)
            if need_real_pool:
                real_pools.append(real_pool.to(dev, torch.float64))
        if bootstrap > 0:
            pools.append(feats.pool.to(dev, torch.float64))
        x, y = real_u8.double() / 255, fake_u8.double() / 255
        rows = torch.zeros(len(x), 3, dtype=torch.float64, device=dev)
        rows[:, 0], rows[:, 1] = psnr(x, y), ssim(x, y)
        if lpips is not None:
            rows[:, 2] = lpips(x.float(), y.float()).double().flatten()
        sums += rows.sum(0)
        per_image.append(rows)
        if tokenizer.is_vq:
            codes += code_histogram(tokens, codes.numel())
            if token_positions:
                positions = _position_histograms(tokens, codes.numel(), positions)
        if info.is_main and seen < gallery:
            take = min(gallery - seen, len(x))
            shown.append(torch.stack([real_u8[:take], fake_u8[:take]]).cpu())
        seen += len(x)
    fake.all_reduce()
    real = real_stats if real is None else real.all_reduce()
    if real.count != fake.count:  # after the pass: unreadable images are skipped in both
        raise SetupError(
            f"real_stats hold {real.count} images, the evaluation read {fake.count}: "
            "compute them from the same images (the same num_images)"
        )
    all_reduce_sum(sums)
    all_reduce_sum(codes)
    if positions is not None:
        all_reduce_sum(positions)
    all_logits = gather_tensors(torch.cat(logits))
    if bootstrap > 0:
        all_per_image = gather_tensors(torch.cat(per_image))
        all_pool = gather_tensors(torch.cat(pools))
        all_real_pool = cached if have_cache else gather_tensors(torch.cat(real_pools))
        if not have_cache and real_pool_cache is not None and info.is_main:
            save_pool_features(all_real_pool, real_pool_cache)  # a statistics file written without them

    def compute() -> dict:
        n = fake.count
        out = {
            "rfid": fid_from_stats(real, fake, method=fid_method),
            "rfid_is": inception_score(all_logits, splits=1)[0],
            "psnr": sums[0].item() / n,
            "ssim": sums[1].item() / n,
        }
        if lpips is not None:
            out["lpips"] = sums[2].item() / n
        if tokenizer.is_vq:
            out["codebook_usage"], out["codebook_entropy"] = usage_and_entropy(codes.cpu())
        out["rfid_num_images"], out["eval_skipped_images"] = n, num_images - n
        if bootstrap > 0:
            out.update(
                _intervals(out, all_real_pool, all_pool, all_logits, all_per_image, bootstrap, lpips is not None)
            )
        if gallery > 0:
            out["gallery"] = torch.cat(shown, 1) if shown else torch.zeros(2, 0, 3, 1, 1, dtype=torch.uint8)
        if positions is not None:
            out["token_positions"] = _position_summary(positions.cpu(), n)
        return out

    return on_main(compute, info)


# ---- intervals, the gallery's images, per-position token usage -------------------------------------------------
def _intervals(
    out: dict,
    real_pool: torch.Tensor,
    pool: torch.Tensor,
    logits: torch.Tensor,
    per_image: torch.Tensor,
    resamples: int,
    with_lpips: bool,
) -> dict:
    if len(real_pool) != len(pool):  # an unreadable image: the cache holds the images read then, not now
        raise SetupError(
            f"the real images' per-image features hold {len(real_pool)} images, this evaluation "
            f"read {len(pool)}: delete the cache so that it is recomputed"
        )
    res = {}
    fids = bootstrap_fid(pool, real=real_pool, resamples=resamples)
    res.update(zip(interval_keys("rfid"), bootstrap_interval(out["rfid"], fids)))
    res.update(
        zip(
            interval_keys("rfid_is"),
            bootstrap_interval(out["rfid_is"], bootstrap_inception_score(logits, resamples, splits=1)),
        )
    )
    for col, metric in enumerate(("psnr", "ssim", "lpips")):
        if metric in out and (metric != "lpips" or with_lpips):
            values = per_image[:, col]
            if torch.isfinite(values).all():  # an exact reconstruction has psnr inf: no interval
                res.update(zip(interval_keys(metric), bootstrap_mean(values, resamples)))
    return res


def _load_pool_cache(path, num_images: int) -> torch.Tensor | None:
    if path is None or not Path(path).is_file():
        return None
    import numpy as np

    pool = torch.from_numpy(np.load(path)).double()
    return pool if len(pool) <= num_images else None


def _position_histograms(tokens: torch.Tensor, codebook_size: int, acc: torch.Tensor | None) -> torch.Tensor:
    """Add [K, codebook_size] counts of each position's codes (tokens [B, K] or [B, 1, K]) to `acc`."""
    ids = tokens.reshape(tokens.shape[0], -1).long()
    k = ids.shape[1]
    flat = (torch.arange(k, device=ids.device) * codebook_size + ids).flatten()
    counts = torch.bincount(flat, minlength=k * codebook_size).view(k, codebook_size)
    return counts if acc is None else acc + counts


def _position_summary(counts: torch.Tensor, num_images: int) -> dict:
    distinct = [int((row > 0).sum()) for row in counts]
    entropy = [max(0.0, usage_and_entropy(row)[1]) for row in counts]  # no -0.0
    return {
        "num_tokens": counts.shape[0],
        "codebook_size": counts.shape[1],
        "num_images": num_images,
        "distinct_codes": distinct,
        "entropy_bits": entropy,
    }
