"""Generation evaluation: the ADM protocol (guided-diffusion's evaluator) in PyTorch, on torch-fidelity's Inception.

    out = evaluate_generation("samples_....npz", "VIRTUAL_imagenet256_labeled.npz", inception=inc, info=info)
    make_reference_batch(val, 10_000, inc, "reference_synthetic64.npz")   # our own batch, same layout

Against a reference batch (bench.eval.npz: mu, sigma, mu_s, sigma_s, arr_0 images):
- gfid: Frechet distance of the samples' pool features to (mu, sigma) (scipy sqrtm with ADM's eps fallback, or
  fid_method="eigh"); gfid_clean: clean-fid's own Frechet distance on the same statistics (second backend);
- gfid_is: Inception Score, softmax of the unbiased logits, ADM's splits (consecutive chunks of 5,000 in sample
  order, the last one shorter), mean;
- sfid: the same distance on the sFID spatial features vs (mu_s, sigma_s) (absent when the batch has none);
- precision, recall: k=3 improved precision/recall of the samples' pool features vs those of the batch's
  images (absent when the batch stores no images);
- gfid_num_samples; `samples`: the samples' metadata (sampler settings, seed, model, ...; see bench.eval.sample);
- with bootstrap > 0, `<metric>_lo` / `<metric>_hi` (95%) for gfid, gfid_is, precision, recall: gfid and gfid_is
  over resamples of the samples against the fixed reference (exact Frechet distance per resample); precision and
  recall over resamples of the per-point memberships (fakes in real balls, reals in fake balls), the k-NN radii
  held fixed (BOOTSTRAP_DESCRIPTION).
ADM computes these in float32 (InceptionFeatures(dtype="float32")). Sample and reference images are read from
uncompressed .npz members through a memory map, so a rank reads only its slice of a 10 GB file.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.core.dist import DistInfo, barrier, gather_tensors, main_rank_says
from bench.core.io import atomic_file
from bench.data import eval_shard
from bench.eval import backends, npz
from bench.eval.inception import SPATIAL_DIM, InceptionFeatures
from bench.eval.intervals import (
    BOOTSTRAP_SEED,
    bootstrap_fid,
    bootstrap_inception_score,
    bootstrap_interval,
    bootstrap_mean,
)
from bench.eval.metrics import (
    ADM_IS_SPLIT_SIZE,
    FeatureStats,
    frechet_distance,
    inception_score,
    precision_recall_indicators,
)
from bench.eval.npz import ReferenceBatch, load_reference_batch, save_reference_batch
from bench.tracking import interval_keys

from .reconstruction import LOGITS_DIM, POOL_DIM
from .run import SINGLE_PROCESS, SetupError, empty_rows, eval_batches, on_main, progress, to_uint8

PR_NEIGHBOURS = 3
# the tag titok.gfid_interval: what the intervals were made from; the method is docs/evaluation.md#intervals
BOOTSTRAP_DESCRIPTION = (
    "95% bootstrap, {resamples} resamples (seed " + str(BOOTSTRAP_SEED) + ") of the {n} samples against the fixed "
    "reference batch; method: docs/evaluation.md#intervals"
)


def npz_member(path: str | os.PathLike, key: str) -> np.ndarray:
    """Array `key` of an .npz, memory-mapped when stored uncompressed (np.savez, ADM's files), else read."""
    path = str(path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return np.load(path)[key]
        with z.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(member)
            header_size = member.tell()
    with open(path, "rb") as f:  # the member's data follows its local file header (30 bytes + name + extra)
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    offset = info.header_offset + 30 + name_len + extra_len + header_size
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _sharded_features(
    images,
    inception: InceptionFeatures,
    info: DistInfo,
    batch_size: int,
    desc: str,
    logits: bool = False,
    spatial: bool = False,
):
    """Pool features (and unbiased logits) of uint8 images [N, H, W, 3] or [N, 3, H, W] gathered in image order,
    and spatial-feature sums all-reduced; each rank reads only its contiguous slice."""
    shard = eval_shard(len(images), info.rank, info.world_size)
    pools, logit_rows = [empty_rows(POOL_DIM, info.device)], [empty_rows(LOGITS_DIM, info.device)]
    spatial_stats = FeatureStats(SPATIAL_DIM, info.device) if spatial else None
    for start in progress(range(shard.start, shard.stop, batch_size), info, desc):
        chunk = images[start : min(start + batch_size, shard.stop)]
        feats = inception(np.array(chunk) if isinstance(chunk, np.ndarray) else chunk)  # a memmap slice: read it
        pools.append(feats.pool.to(info.device))
        if logits:
            logit_rows.append(feats.logits.to(info.device))
        if spatial:
            spatial_stats.update(feats.spatial)
    pool = gather_tensors(torch.cat(pools))
    return (
        pool,
        gather_tensors(torch.cat(logit_rows)) if logits else None,
        spatial_stats.all_reduce() if spatial else None,
    )


def _open_samples(samples) -> tuple[object, dict]:
    if isinstance(samples, (str, os.PathLike)):
        if not Path(samples).is_file():
            raise SetupError(f"samples file {samples} does not exist")
        with np.load(samples) as f:
            meta = npz._metadata(f)
        return npz_member(samples, "arr_0"), meta
    return samples, {}


def _open_reference(reference) -> tuple[ReferenceBatch, object]:
    if isinstance(reference, ReferenceBatch):
        return reference, reference.images
    if not Path(reference).is_file():
        raise SetupError(
            f"reference batch {reference} does not exist: for ImageNet 256 download "
            "VIRTUAL_imagenet256_labeled.npz (guided-diffusion's evaluation suite), or make one "
            "from real images with make_reference_batch (CLI: --make-reference-batch)"
        )
    ref = load_reference_batch(reference, images=False)
    with zipfile.ZipFile(reference) as z:
        has_images = "arr_0.npy" in z.namelist()
    return ref, npz_member(reference, "arr_0") if has_images else None


def reference_pool_features(
    reference_batch, inception: InceptionFeatures, info: DistInfo = SINGLE_PROCESS, batch_size: int = 64, images=None
) -> torch.Tensor:
    """Pool features of a reference batch's images (for precision/recall), cached next to a reference batch file
    (one cache per Inception: real weights or the stand-in), so a sweep's cells compute them once. Rank 0 decides
    whether the cache is there (the other ranks follow: they join the pass that computes them, or not)."""
    if images is None:
        images = _open_reference(reference_batch)[1]
    if isinstance(reference_batch, ReferenceBatch):
        return _sharded_features(images, inception, info, batch_size, "reference features")[0]
    cache = _pool_cache(Path(reference_batch), inception)
    if main_rank_says(info.is_main and cache.is_file(), info.device):
        return on_main(lambda: torch.from_numpy(np.load(cache)), info).to(info.device)
    pool = _sharded_features(images, inception, info, batch_size, "reference features")[0]
    if info.is_main:
        _save_pool_cache(cache, pool)
    barrier()
    return pool


def _pool_cache(reference_batch: Path, inception: InceptionFeatures) -> Path:
    which = "standin" if inception.random else "inception"
    return reference_batch.with_name(f"{reference_batch.stem}.pool-{which}.npy")


def _save_pool_cache(cache: Path, pool: torch.Tensor) -> None:
    with atomic_file(cache) as f:
        np.save(f, pool.cpu().numpy())


@torch.no_grad()
def evaluate_generation(
    samples,
    reference_batch,
    *,
    inception: InceptionFeatures,
    info: DistInfo = SINGLE_PROCESS,
    batch_size: int = 64,
    fid_method: str = "sqrtm",
    clean_fid: bool = True,
    metadata: dict | None = None,
    bootstrap: int = 0,
) -> dict:
    """ADM metrics of `samples` (an ADM .npz path, or uint8 images [N, H, W, 3] / [N, 3, H, W]) against
    `reference_batch` (a path or a ReferenceBatch); see the module docstring for the keys. `metadata` is added
    to the samples' own under the result's `samples` key. Every rank returns the same dict."""
    images, sample_meta = _open_samples(samples)
    ref, ref_images = _open_reference(reference_batch)
    n = len(images)
    pool, logits, spatial = _sharded_features(
        images, inception, info, batch_size, "sample features", logits=True, spatial=ref.mu_s is not None
    )
    ref_pool = None
    if ref_images is not None:
        ref_pool = reference_pool_features(reference_batch, inception, info, batch_size, ref_images)

    def compute() -> dict:
        mu, sigma = FeatureStats.of(pool).mean_cov()
        out = {"gfid": frechet_distance(mu, sigma, ref.mu, ref.sigma, method=fid_method)}
        if clean_fid:
            out["gfid_clean"] = backends.cleanfid_fid(mu, sigma, ref.mu, ref.sigma)
        out["gfid_is"] = inception_score(logits, split_size=ADM_IS_SPLIT_SIZE)[0]
        if spatial is not None:
            out["sfid"] = frechet_distance(*spatial.mean_cov(), ref.mu_s, ref.sigma_s, method=fid_method)
        if ref_pool is not None:
            inside_real, inside_fake = precision_recall_indicators(ref_pool, pool, k=PR_NEIGHBOURS, device=info.device)
            out["precision"], out["recall"] = inside_real.double().mean().item(), inside_fake.double().mean().item()
        if bootstrap > 0:
            reps = bootstrap_fid(pool, mu=ref.mu, sigma=ref.sigma, resamples=bootstrap)
            out.update(zip(interval_keys("gfid"), bootstrap_interval(out["gfid"], reps)))
            reps = bootstrap_inception_score(logits, bootstrap, split_size=ADM_IS_SPLIT_SIZE)
            out.update(zip(interval_keys("gfid_is"), bootstrap_interval(out["gfid_is"], reps)))
            if ref_pool is not None:
                out.update(zip(interval_keys("precision"), bootstrap_mean(inside_real, bootstrap)))
                out.update(zip(interval_keys("recall"), bootstrap_mean(inside_fake, bootstrap)))
        out["gfid_num_samples"] = n
        out["samples"] = {**sample_meta, **(metadata or {})}
        return out

    return on_main(compute, info)


@torch.no_grad()
def make_reference_batch(
    dataset: Dataset,
    num_images: int,
    inception: InceptionFeatures,
    path: str | os.PathLike,
    *,
    batch_size: int = 64,
    info: DistInfo = SINGLE_PROCESS,
    metadata: dict | None = None,
    num_workers: int = 0,
) -> Path:
    """Write a reference batch in the VIRTUAL_imagenet256_labeled.npz layout from the first `num_images` real
    images: mu, sigma (pool), mu_s, sigma_s (spatial), arr_0 the uint8 images, arr_1 the labels, and metadata
    (dataset, Inception stand-in or not). The main rank writes; every rank returns the path."""
    spatial = FeatureStats(SPATIAL_DIM, info.device)
    # a rank without images sends an empty 1-d tensor, which torch.cat skips
    images, labels = [torch.zeros(0, dtype=torch.uint8)], [torch.zeros(0, dtype=torch.long)]
    pools = [empty_rows(POOL_DIM, info.device)]
    for x, y in eval_batches(dataset, num_images, batch_size, info, num_workers, desc="reference batch"):
        u8 = to_uint8(x)
        feats = inception(u8)
        pools.append(feats.pool.to(info.device))
        spatial.update(feats.spatial)
        images.append(u8.permute(0, 2, 3, 1).cpu())
        labels.append(y.cpu())
    spatial.all_reduce()
    pools = gather_tensors(torch.cat(pools))
    images = gather_tensors(torch.cat(images))
    labels = gather_tensors(torch.cat(labels))
    path = Path(path)
    if info.is_main:
        describe = getattr(dataset, "describe", dict)()
        meta = {
            "dataset": describe,
            "num_images": len(labels),
            "eval_skipped_images": num_images - len(labels),
            "inception_random": inception.random,
            **(metadata or {}),
        }
        mu, sigma = FeatureStats.of(pools).mean_cov()
        mu_s, sigma_s = spatial.mean_cov()
        save_reference_batch(
            path,
            mu=mu,
            sigma=sigma,
            mu_s=mu_s,
            sigma_s=sigma_s,
            images=images.numpy(),
            labels=labels.numpy(),
            metadata=meta,
        )
        _save_pool_cache(_pool_cache(path, inception), pools)  # precision/recall need the images' features
    barrier()
    return path
