"""Metric primitives on features and images; device-agnostic, no network weights.

- FeatureStats: streaming float64 sums (n, sum x, sum x x^T); merge / all_reduce across ranks, then mean_cov()
  with the unbiased covariance (sum xx^T - n mu mu^T) / (n - 1).
- frechet_distance / fid_from_stats: ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)). Default "sqrtm" is scipy's
  matrix square root with the ADM / pytorch-fid handling (eps on the diagonal when the product is singular
  enough to give non-finite values; a small imaginary part dropped, a large one an error). "eigh" is an exact
  rewrite, tr (S1 S2)^(1/2) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))), faster at 2048 dims and agreeing to
  round-off (docs/measurements.md).
- inception_score: the ADM formula: softmax of the unbiased logits, consecutive splits (no shuffle),
  exp(mean KL(p(y|x) || p(y))) per split; returns (mean, std) over splits: `splits` equal ones, or ADM's rule
  (chunks of ADM_IS_SPLIT_SIZE samples, the last one shorter).
- precision_recall: improved precision/recall (Kynkaanniemi et al. 2019): k-NN radii within each set (k=3),
  precision = share of fakes inside some real ball, recall = share of reals inside some fake ball;
  precision_recall_indicators: the per-point memberships behind them (the intervals resample those).
- psnr, ssim (Gaussian window 11, sigma 1.5, valid filtering), per image, on [0, 1] images.
- codebook usage (share of codes used) and entropy (bits) of the code histogram; histograms add across ranks.
- spearman: rank correlation of two sequences (the report's trend numbers, the feature-network sensitivity).
Bootstrap intervals of these metrics: bench/eval/intervals.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


# ---- streaming statistics ----------------------------------------------------------------------------------
class FeatureStats:
    """Mergeable float64 sums of features; `all_reduce()` sums them over torch.distributed ranks."""

    def __init__(self, dim: int, device: str | torch.device = "cpu"):
        self.dim = dim
        self.n = torch.zeros((), dtype=torch.float64, device=device)  # a tensor, so it all-reduces like the rest
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @classmethod
    def of(cls, features) -> FeatureStats:
        f = torch.as_tensor(features)
        return cls(f.shape[1], f.device).update(f)

    def update(self, features) -> FeatureStats:
        f = torch.as_tensor(features).to(self.sum.device, torch.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"expected features [N, {self.dim}], got {tuple(f.shape)}")
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dim {other.dim} into dim {self.dim}")
        self.n += other.n.to(self.n.device)
        self.sum += other.sum.to(self.sum.device)
        self.outer += other.outer.to(self.outer.device)
        return self

    def all_reduce(self, group=None) -> FeatureStats:
        """Sum over ranks in place (no-op without an initialised process group)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for t in (self.n, self.sum, self.outer):
                dist.all_reduce(t, group=group)
        return self

    @property
    def count(self) -> int:
        return int(self.n.item())

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.count
        if n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, have {n}")
        mu = self.sum / n
        cov = (self.outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu.cpu().numpy(), cov.cpu().numpy()


# ---- Frechet distance ----------------------------------------------------------------------------------------
def _trace_sqrt_product_sqrtm(s1: np.ndarray, s2: np.ndarray, eps: float) -> float:
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        # A (nearly) singular product: regularise both covariances, as ADM and pytorch-fid do.
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        # Round-off gives a small imaginary part; a large one means the statistics are broken.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Frechet distance: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(np.trace(covmean))


def _trace_sqrt_product_eigh(s1: np.ndarray, s2: np.ndarray) -> float:
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1  # symmetric PSD, same non-zero eigenvalues as s1 @ s2
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, method: str = "sqrtm") -> float:
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    if method == "sqrtm":
        tr = _trace_sqrt_product_sqrtm(s1, s2, eps)
    elif method == "eigh":
        tr = _trace_sqrt_product_eigh(s1, s2)
    else:
        raise ValueError(f"method must be 'sqrtm' or 'eigh', got {method!r}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr)


def fid_from_stats(a: FeatureStats, b: FeatureStats, **kwargs) -> float:
    return frechet_distance(*a.mean_cov(), *b.mean_cov(), **kwargs)


# ---- Inception Score -----------------------------------------------------------------------------------------
ADM_IS_SPLIT_SIZE = 5000  # ADM's evaluator scores consecutive chunks of 5,000 samples


def split_bounds(n: int, splits: int, split_size: int | None) -> list[int]:
    """The chunk boundaries of the Inception Score over n samples (see inception_score)."""
    if split_size is not None:
        return list(range(0, n, split_size)) + [n]
    if n < splits:
        raise ValueError(f"{n} samples cannot make {splits} splits")
    return [i * n // splits for i in range(splits + 1)]


def inception_score(logits, splits: int = 10, split_size: int | None = None) -> tuple[float, float]:
    """(mean, std) over consecutive chunks of the samples: `splits` equal ones (torch-fidelity's rule), or with
    `split_size` chunks of that many and a shorter last one (ADM's evaluator: ADM_IS_SPLIT_SIZE). The two agree
    at 50,000 samples and differ at a few thousand (docs/measurements.md)."""
    lg = torch.as_tensor(logits).double().cpu()
    n = lg.shape[0]
    bounds = split_bounds(n, splits, split_size)
    log_p = lg.log_softmax(1)
    scores = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = log_p[lo:hi]
        log_q = torch.logsumexp(part, 0) - math.log(part.shape[0])  # log of the chunk's marginal p(y)
        kl = (part.exp() * (part - log_q)).sum(1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores)), float(np.std(scores))


# ---- precision / recall --------------------------------------------------------------------------------------
def _knn_radii(x: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    # k+1: each point is its own nearest neighbour at distance 0.
    return torch.cat([torch.cdist(rows, x).kthvalue(k + 1, dim=1).values for rows in x.split(batch_size)])


def _inside_any_ball(x: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch_size: int) -> float:
    inside = [(torch.cdist(rows, centres) <= radii[None]).any(1) for rows in x.split(batch_size)]
    return torch.cat(inside).double().mean().item()


def precision_recall(
    real_pool, fake_pool, k: int = 3, batch_size: int = 2000, device: str | torch.device | None = None
) -> tuple[float, float]:
    """(precision, recall) of fakes against reals; distances in float64, batched to bound memory."""
    real, fake = torch.as_tensor(real_pool), torch.as_tensor(fake_pool)
    dev = device or real.device
    real, fake = real.to(dev, torch.float64), fake.to(dev, torch.float64)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    precision = _inside_any_ball(fake, real, _knn_radii(real, k, batch_size), batch_size)
    recall = _inside_any_ball(real, fake, _knn_radii(fake, k, batch_size), batch_size)
    return precision, recall


def precision_recall_indicators(
    real_pool, fake_pool, k: int = 3, batch_size: int = 2000, device: str | torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point membership behind precision_recall: (fake inside some real ball [N_fake], real inside some fake
    ball [N_real]), booleans on the CPU; their means are (precision, recall)."""
    real, fake = torch.as_tensor(real_pool), torch.as_tensor(fake_pool)
    dev = device or real.device
    real, fake = real.to(dev, torch.float64), fake.to(dev, torch.float64)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")

    def inside(x, centres, radii):
        return torch.cat([(torch.cdist(rows, centres) <= radii[None]).any(1) for rows in x.split(batch_size)])

    return (
        inside(fake, real, _knn_radii(real, k, batch_size)).cpu(),
        inside(real, fake, _knn_radii(fake, k, batch_size)).cpu(),
    )


# ---- image similarity ----------------------------------------------------------------------------------------
def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, [B]; inf for identical images."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    g = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(g**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: K1=0.01, K2=0.03, Gaussian window, 'valid' filtering), [B]."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two [B,C,H,W] batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"images of {tuple(x.shape[-2:])} px are smaller than the {window}-px SSIM window")
    x, y = x.double(), y.double()
    c = x.shape[1]
    w = _gaussian_window(window, sigma, c, x.device, x.dtype)

    def blur(t):
        return F.conv2d(t, w, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


# ---- trends --------------------------------------------------------------------------------------------------
def spearman(x, y) -> float:
    """Spearman's rho (average ranks for ties) over the pairs with no NaN; NaN with fewer than 3 such pairs or
    a constant variable."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.unique(x).size < 2 or np.unique(y).size < 2:
        return float("nan")
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


# ---- codebook ------------------------------------------------------------------------------------------------
def code_histogram(ids, codebook_size: int) -> torch.Tensor:
    """Counts per code (int64, [codebook_size]); add histograms across batches and ranks."""
    ids = torch.as_tensor(ids).flatten().long()
    if ids.numel() and (ids.min() < 0 or ids.max() >= codebook_size):
        raise ValueError(f"code ids outside [0, {codebook_size})")
    return torch.bincount(ids, minlength=codebook_size)


def usage_and_entropy(counts) -> tuple[float, float]:
    """(share of codes used at least once, entropy of the code distribution in bits)."""
    c = torch.as_tensor(counts).double()
    p = c[c > 0] / c.sum()
    return (c > 0).double().mean().item(), float(-(p * p.log2()).sum())


def codebook_usage_and_entropy(ids, codebook_size: int) -> tuple[float, float]:
    return usage_and_entropy(code_histogram(ids, codebook_size))
