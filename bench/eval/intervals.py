"""Uncertainty of the evaluation metrics: 95% intervals from bootstrap resamples of the evaluation images (seeded,
device-independent), and a Wilson interval for a proportion.

- bootstrap_interval: the replicates' percentile interval, shifted by their bias, widened to hold the estimate;
- bootstrap_mean: of a mean of per-image values (PSNR, SSIM, LPIPS, a precision/recall membership);
- bootstrap_fid: the exact Frechet distance of each resample (paired real and fake features: rFID; against fixed
  reference statistics: gFID);
- bootstrap_inception_score: the Inception Score of each resample, with inception_score's splits;
- wilson_interval: a classifier's top-1 on n trials.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .metrics import split_bounds

BOOTSTRAP_SEED = 0  # fixed: the same resamples (of the same images) in every cell and every rerun
INTERVAL_LEVEL = 0.95
# up to this many images a resample's Frechet distance comes from [n, n] Gram matrices (exact, cheap); beyond it
# from the [D, D] covariances (one eigh per resample, on the features' device)
GRAM_MAX_IMAGES = 4096


def bootstrap_indices(n: int, resamples: int, seed: int = BOOTSTRAP_SEED) -> torch.Tensor:
    """[resamples, n] image indices drawn with replacement by a seeded CPU generator (device-independent)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (resamples, n), generator=g)


def bootstrap_interval(
    estimate: float, replicates, level: float = INTERVAL_LEVEL, debias: bool = True
) -> tuple[float, float]:
    """(lo, hi): the replicates' central `level` percentile interval, moved by their bias (mean of the replicates
    minus the estimate) when `debias`, then widened to hold the estimate. Resampling with replacement biases a
    small-sample FID upwards (duplicated images shrink the covariance and move the mean); the shift keeps the
    interval about the estimate it describes. A mean of per-image values is unbiased: its shift is only the
    resamples' noise, which would push a recall of 0.016 to [-0.0002, ...], so `bootstrap_mean` passes False."""
    r = np.asarray(replicates, np.float64)
    r = r[np.isfinite(r)]
    if not r.size or not math.isfinite(estimate):
        return float("nan"), float("nan")
    shift = r.mean() - estimate if debias else 0.0
    lo, hi = np.quantile(r, [(1 - level) / 2, (1 + level) / 2]) - shift
    return float(min(lo, estimate)), float(max(hi, estimate))


def bootstrap_mean(
    values, resamples: int, seed: int = BOOTSTRAP_SEED, level: float = INTERVAL_LEVEL
) -> tuple[float, float]:
    """Interval of the mean of per-image `values` [N] (PSNR, SSIM, LPIPS, an indicator) over `resamples`."""
    v = torch.as_tensor(values).double().cpu()
    reps = v[bootstrap_indices(len(v), resamples, seed)].mean(1)
    return bootstrap_interval(v.mean().item(), reps.numpy(), level, debias=False)


def wilson_interval(successes: int, n: int, level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (a classifier's top-1 on n fixed-classifier trials)."""
    from scipy.stats import norm

    if n <= 0:
        return float("nan"), float("nan")
    z = float(norm.ppf((1 + level) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p))  # round-off at p = 0 or 1


def _centre_np(m: np.ndarray) -> np.ndarray:
    """C M C with C = I - 11^T/n: a Gram matrix of rows -> that of the rows minus their mean."""
    return m - m.mean(0, keepdims=True) - m.mean(1, keepdims=True) + m.mean()


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _cov(x: torch.Tensor) -> torch.Tensor:
    d = x - x.mean(0)
    return d.T @ d / (len(x) - 1)


def bootstrap_fid(
    fake,
    *,
    real=None,
    mu=None,
    sigma=None,
    resamples: int,
    seed: int = BOOTSTRAP_SEED,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Frechet distances of `resamples` bootstrap resamples of the images behind `fake` [N, D]:
    with `real` [N, D] (per-image features of the same images: rFID) both resampled with the same indices; else
    against fixed statistics `mu`, `sigma` (a reference batch: gFID). Exact (no eps, no sqrtm):
    tr (S1 S2)^(1/2) = sum of the singular values of A B^T for S1 = A^T A, S2 = B^T B, so up to
    GRAM_MAX_IMAGES images every resample is [N, N] algebra on Gram matrices computed once; beyond, covariances
    and one symmetric eigh per resample (float64, on `device`)."""
    dev = device or torch.as_tensor(fake).device
    f = torch.as_tensor(fake).to(dev, torch.float64)
    n = len(f)
    if n < 2:
        raise ValueError(f"a bootstrap Frechet distance needs at least 2 images, have {n}")
    paired = real is not None
    if paired:
        r = torch.as_tensor(real).to(dev, torch.float64)
        if r.shape != f.shape:
            raise ValueError(f"paired features differ in shape: {tuple(r.shape)} vs {tuple(f.shape)}")
    else:
        m0 = torch.as_tensor(np.asarray(mu), dtype=torch.float64, device=dev)
        s0 = torch.as_tensor(np.asarray(sigma), dtype=torch.float64, device=dev)
    idx = bootstrap_indices(n, resamples, seed).to(dev)
    out = np.empty(resamples)
    if n <= GRAM_MAX_IMAGES:  # the [N, N] algebra in numpy: LAPACK's small decompositions, no per-call overhead
        g_ff = (f @ f.T).cpu().numpy()
        if paired:
            d = f - r
            g_rr, k, g_dd = (r @ r.T).cpu().numpy(), (r @ f.T).cpu().numpy(), (d @ d.T).cpu().numpy()
        else:
            h, fm = (f @ s0 @ f.T).cpu().numpy(), (f @ m0).cpu().numpy()
            tr0, mm0 = torch.trace(s0).item(), (m0 @ m0).item()
        for b, i in enumerate(idx.cpu().numpy()):
            sub = np.ix_(i, i)
            tr_f = np.trace(_centre_np(g_ff[sub])) / (n - 1)
            if paired:
                mean_term = g_dd[sub].mean()
                tr_r = np.trace(_centre_np(g_rr[sub])) / (n - 1)
                cross = np.linalg.svd(_centre_np(k[sub]), compute_uv=False).sum() / (n - 1)
            else:
                mean_term = g_ff[sub].mean() - 2 * fm[i].mean() + mm0
                tr_r = tr0
                m = _centre_np(h[sub])  # B S0 B^T: its eigenvalues are those of S0 S_b times (n - 1)
                cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum() / math.sqrt(n - 1)
            out[b] = mean_term + tr_f + tr_r - 2 * cross
        return out
    root0 = None if paired else _sqrt_psd(s0)
    for b, i in enumerate(idx):
        fb = f[i]
        sf = _cov(fb)
        if paired:
            rb = r[i]
            sr, diff = _cov(rb), fb.mean(0) - rb.mean(0)
            root = _sqrt_psd(sr)
        else:
            sr, diff, root = s0, fb.mean(0) - m0, root0
        ev = torch.linalg.eigvalsh(root @ sf @ root)
        out[b] = (diff @ diff + torch.trace(sf) + torch.trace(sr) - 2 * ev.clamp_min(0).sqrt().sum()).item()
    return out


def bootstrap_inception_score(
    logits,
    resamples: int,
    seed: int = BOOTSTRAP_SEED,
    splits: int = 10,
    split_size: int | None = None,
    max_elements: int = 2**24,
) -> np.ndarray:
    """Inception Scores (mean over splits, as `inception_score(logits, splits, split_size)`) of bootstrap
    resamples, computed a block of resamples at a time (at most `max_elements` log-probabilities in memory)."""
    log_p = torch.as_tensor(logits).double().cpu().log_softmax(1)
    n, c = log_p.shape
    bounds = split_bounds(n, splits, split_size)
    idx = bootstrap_indices(n, resamples, seed)
    scores = torch.zeros(resamples, len(bounds) - 1, dtype=torch.float64)
    for j, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        step = max(1, max_elements // ((hi - lo) * c))
        for start in range(0, resamples, step):
            part = log_p[idx[start : start + step, lo:hi]]  # [b, m, C]
            log_q = torch.logsumexp(part, 1, keepdim=True) - math.log(hi - lo)
            scores[start : start + step, j] = (part.exp() * (part - log_q)).sum(2).mean(1).exp()
    return scores.mean(1).numpy()
