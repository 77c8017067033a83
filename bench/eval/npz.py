"""ADM-format .npz files: generated samples and reference batches.

Samples (what guided-diffusion's sampling scripts write and its evaluator reads):
    arr_0     uint8 [N, H, W, 3] images
    arr_1     int64 [N] class labels (when given; ADM's class-conditional scripts put labels here)
    metadata  0-d unicode array holding a JSON object (model, checkpoint, steps, guidance, seed, ...);
              ADM's evaluator reads only arr_0, so the extra keys are harmless.
Reference batch (VIRTUAL_imagenet256_labeled.npz layout):
    mu, sigma        pool_3 statistics (2048, 2048x2048)
    mu_s, sigma_s    sFID spatial statistics (2023, 2023x2023)
    arr_0            uint8 [N, H, W, 3] reference images (precision/recall), arr_1 labels when present
Files are written uncompressed (np.savez, as ADM does) and atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.core.io import atomic_file


def _write_npz(path: str | os.PathLike, arrays: dict) -> Path:
    path = Path(path)
    with atomic_file(path) as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **arrays)
    return path


def _check_images(images) -> np.ndarray:
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"ADM .npz images are uint8 [N, H, W, 3]; got {a.dtype} {a.shape}")
    return a


def _extras(labels, metadata, n: int) -> dict:
    out = {}
    if labels is not None:
        lab = np.asarray(labels).astype(np.int64).reshape(-1)
        if lab.shape[0] != n:
            raise ValueError(f"{lab.shape[0]} labels for {n} images")
        out["arr_1"] = lab
    if metadata is not None:
        out["metadata"] = np.array(json.dumps(metadata, sort_keys=True, default=str))
    return out


def _metadata(f) -> dict:
    return json.loads(str(f["metadata"])) if "metadata" in f.files else {}


def save_samples_npz(path, images_uint8_nhwc, labels=None, metadata: dict | None = None) -> Path:
    images = _check_images(images_uint8_nhwc)
    return _write_npz(path, {"arr_0": images, **_extras(labels, metadata, len(images))})


@dataclass
class Samples:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray | None
    metadata: dict = field(default_factory=dict)


def load_samples_npz(path) -> Samples:
    with np.load(path) as f:
        return Samples(f["arr_0"], f["arr_1"] if "arr_1" in f.files else None, _metadata(f))


@dataclass
class ReferenceBatch:
    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray | None
    sigma_s: np.ndarray | None
    images: np.ndarray | None  # uint8 [N, H, W, 3], None when not stored or not loaded
    labels: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)


def load_reference_batch(path, images: bool = True) -> ReferenceBatch:
    """Statistics as float64; images only when asked (ADM's 10k x 256^2 batch is ~2 GB)."""
    with np.load(path) as f:
        missing = {"mu", "sigma"} - set(f.files)
        if missing:
            raise ValueError(f"{path} is not a reference batch: no {sorted(missing)} (has {f.files})")

        def get(key):
            return np.asarray(f[key], np.float64) if key in f.files else None

        return ReferenceBatch(
            get("mu"),
            get("sigma"),
            get("mu_s"),
            get("sigma_s"),
            f["arr_0"] if images and "arr_0" in f.files else None,
            f["arr_1"] if "arr_1" in f.files else None,
            _metadata(f),
        )


def save_reference_batch(
    path, *, mu, sigma, mu_s=None, sigma_s=None, images=None, labels=None, metadata: dict | None = None
) -> Path:
    arrays = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64)}
    if mu_s is not None:
        arrays["mu_s"], arrays["sigma_s"] = np.asarray(mu_s, np.float64), np.asarray(sigma_s, np.float64)
    n = 0
    if images is not None:
        arrays["arr_0"] = _check_images(images)
        n = len(arrays["arr_0"])
    elif labels is not None:
        raise ValueError("labels without images")
    return _write_npz(path, {**arrays, **_extras(labels, metadata, n)})
