"""Uncertainty of the evaluation metrics: bootstrap resamples of the evaluation images.

The exact per-resample Frechet distance equals frechet_distance on the resampled features (both of its regimes);
intervals hold their estimate and shrink with more images (seeded, deterministic); evaluate_reconstruction and
evaluate_generation record `<metric>_lo` / `_hi`, the gallery's images and per-position token usage; the eval
stages' new settings are part of their identities."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bench.eval import intervals as IV
from bench.eval import metrics as M
from bench.eval.generation import evaluate_generation, make_reference_batch
from bench.eval.npz import load_reference_batch, save_samples_npz
from bench.eval.reconstruction import evaluate_reconstruction
from bench.stages import EvalGenSpec, EvalReconSpec, eval_gen, eval_recon
from bench.train.recipes import DataConfig
from tests.eval.test_run import N, cache, inception, toys, val_images  # noqa: F401 (fixtures)


def features(n: int, d: int, seed: int, noise: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n, d, generator=g, dtype=torch.float64)
    return real, real + noise * torch.randn(n, d, generator=g, dtype=torch.float64) + 0.1


@pytest.mark.parametrize("n, d", [(30, 64), (50, 8)])  # Gram regime (n <= D) and covariance regime
def test_bootstrap_fid_is_the_frechet_distance_of_each_resample(n, d, monkeypatch):
    monkeypatch.setattr(IV, "GRAM_MAX_IMAGES", 4096 if n <= d else 10)
    real, fake = features(n, d, 0)
    idx = IV.bootstrap_indices(n, 4)
    paired = IV.bootstrap_fid(fake, real=real, resamples=4)
    mu, sigma = M.FeatureStats.of(real).mean_cov()
    fixed = IV.bootstrap_fid(fake, mu=mu, sigma=sigma, resamples=4)
    for b, i in enumerate(idx):
        fake_b = M.FeatureStats.of(fake[i]).mean_cov()
        expected = M.frechet_distance(*M.FeatureStats.of(real[i]).mean_cov(), *fake_b, method="eigh")
        assert paired[b] == pytest.approx(expected, rel=1e-5)
        assert fixed[b] == pytest.approx(M.frechet_distance(mu, sigma, *fake_b, method="eigh"), rel=1e-5)
    assert np.array_equal(paired, IV.bootstrap_fid(fake, real=real, resamples=4))  # seeded: the same resamples


def test_bootstrap_inception_score_is_the_score_of_each_resample():
    logits = 3 * torch.randn(37, 20, generator=torch.Generator().manual_seed(0))
    idx = IV.bootstrap_indices(37, 5)
    for kw in ({"splits": 1}, {"splits": 3}, {"split_size": 10}):
        expected = [M.inception_score(logits[i], **kw)[0] for i in idx]
        assert IV.bootstrap_inception_score(logits, 5, max_elements=300, **kw) == pytest.approx(expected, rel=1e-12)


def test_intervals_hold_the_estimate_and_shrink_with_more_images():
    widths = {}
    for n in (20, 80, 320):
        real, fake = features(n, 16, n)
        estimate = M.frechet_distance(
            *M.FeatureStats.of(real).mean_cov(), *M.FeatureStats.of(fake).mean_cov(), method="eigh"
        )
        lo, hi = IV.bootstrap_interval(estimate, IV.bootstrap_fid(fake, real=real, resamples=200))
        values = (fake - real).pow(2).mean(1)  # a per-image value, as PSNR
        mlo, mhi = IV.bootstrap_mean(values, 200)
        assert lo <= estimate <= hi and mlo <= values.mean().item() <= mhi
        widths[n] = (hi - lo, mhi - mlo)
    assert widths[20][0] > widths[80][0] > widths[320][0]
    assert widths[20][1] > widths[80][1] > widths[320][1]
    # a mean's interval is the plain percentile one: a recall of 1/64 cannot reach below 0
    indicator = torch.zeros(64)
    indicator[5] = 1
    assert IV.bootstrap_mean(indicator, 1000) == (0.0, pytest.approx(3 / 64))
    lo, hi = IV.wilson_interval(30, 100)
    assert lo < 0.3 < hi and IV.wilson_interval(300, 1000)[1] - IV.wilson_interval(300, 1000)[0] < hi - lo
    assert IV.wilson_interval(0, 10)[0] == 0.0 and IV.wilson_interval(10, 10)[1] == 1.0


@pytest.mark.slow
def test_reconstruction_records_intervals_gallery_and_token_positions(toys, inception, tmp_path):  # noqa: F811
    tok, teacher, _ = toys
    cache_file = tmp_path / "real.pool.npy"
    kw = dict(
        num_images=N,
        batch_size=4,
        inception=inception,
        teacher=teacher,
        fid_method="eigh",
        bootstrap=50,
        real_pool_cache=cache_file,
    )
    out = evaluate_reconstruction(tok, val_images(), gallery=3, token_positions=True, **kw)
    for metric in ("rfid", "rfid_is", "psnr", "ssim"):
        assert out[f"{metric}_lo"] <= out[metric] <= out[f"{metric}_hi"], metric
        # the stand-in Inception's logits are near 0, so its IS is 1 to float64's last digit on some CPUs (Intel
        # AVX512, 2026-12-03): every resample's too, and that interval may have no width
        assert metric == "rfid_is" or out[f"{metric}_lo"] < out[f"{metric}_hi"], metric
    assert "lpips_lo" not in out  # no LPIPS network: no LPIPS, no interval
    assert cache_file.is_file() and np.load(cache_file).shape == (N, 2048)
    again = evaluate_reconstruction(tok, val_images(), **kw)  # the real features from the cache
    assert again["rfid_lo"] == pytest.approx(out["rfid_lo"], rel=1e-6)
    assert "gallery" not in again and "token_positions" not in again
    gallery = out["gallery"]
    assert gallery.shape == (2, 3, 3, 32, 32) and gallery.dtype == torch.uint8
    k = tok.config.num_latent_tokens
    positions = out["token_positions"]
    assert positions["num_tokens"] == k and len(positions["distinct_codes"]) == k == len(positions["entropy_bits"])
    assert all(1 <= c <= N for c in positions["distinct_codes"])
    assert all(0 <= e <= np.log2(N) + 1e-9 for e in positions["entropy_bits"])

    png = eval_recon.save_gallery(gallery, tmp_path / "gallery.png", "TiTok-S-16")
    with Image.open(png) as im:
        assert im.size == (3 * 32, 2 * 32)
        meta = json.loads(im.text["titok.gallery"])
    assert meta == {"rows": ["original", "reconstruction"], "count": 3, "tile": [32, 32], "tokenizer": "TiTok-S-16"}


@pytest.mark.slow
def test_generation_records_intervals(inception, tmp_path):  # noqa: F811
    ds = val_images()
    path = make_reference_batch(ds, N, inception, tmp_path / "ref.npz", batch_size=4)
    ref = load_reference_batch(path)
    samples = save_samples_npz(tmp_path / "samples.npz", ref.images[::-1].copy(), ref.labels, {"seed": 1})
    out = evaluate_generation(
        samples, path, inception=inception, batch_size=4, fid_method="eigh", clean_fid=False, bootstrap=50
    )
    for metric in ("gfid", "gfid_is", "precision", "recall"):
        assert out[f"{metric}_lo"] <= out[metric] <= out[f"{metric}_hi"], metric


def test_eval_settings_are_in_the_eval_identities():
    data = DataConfig(name="synthetic", image_size=32)
    recon = EvalReconSpec(tokenizer="t", real_stats="s.npz", data=data, num_images=8)
    for change in ({"bootstrap": 0}, {"gallery": 0}):
        assert eval_recon.RULE.identity(recon) != eval_recon.RULE.identity(
            EvalReconSpec(**{**recon.__dict__, **change})
        )
    gen = EvalGenSpec(generator="g", tokenizer="t", reference_batch="r.npz", num_samples=8)
    assert eval_gen.RULE.identity(gen) != eval_gen.RULE.identity(EvalGenSpec(**{**gen.__dict__, "bootstrap": 0}))
