"""Metric primitives against closed forms, against torch-fidelity and clean-fid, and end to end through both
libraries with the stand-in Inception weights (the real code paths, offline)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from bench import weights
from bench.eval import backends, npz
from bench.eval.inception import SPATIAL_DIM, InceptionFeatures
from bench.eval.metrics import (
    FeatureStats,
    code_histogram,
    codebook_usage_and_entropy,
    fid_from_stats,
    frechet_distance,
    inception_score,
    precision_recall,
    psnr,
    ssim,
    usage_and_entropy,
)

N_IMAGES = 16  # per set: Inception costs ~0.1-0.2 s per image on 2 CPU cores


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("weights")
        mp.setenv(weights.ENV_CACHE, str(path))
        yield path


@pytest.fixture(scope="module")
def extractor(cache):
    return InceptionFeatures("cpu", allow_random=True)


@pytest.fixture(scope="module")
def image_sets():
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(N_IMAGES, 3, 32, 32, generator=g) * 255).to(torch.uint8)  # uniform noise
    b = (torch.rand(N_IMAGES, 3, 32, 32, generator=g) * 128 + 100).to(torch.uint8)  # brighter, lower contrast
    return a, b


@pytest.fixture(scope="module")
def features(extractor, image_sets):
    return tuple(extractor(x) for x in image_sets)


def fid_low_rank(f1, f2) -> float:
    """FID straight from two small feature sets, independent of any matrix square root: with centred A [n,d] and
    B [m,d], S1 S2 = A'A B'B / c has the non-zero eigenvalues of (AB')(AB')' / c, so tr sqrt(S1 S2) is the sum of
    the singular values of AB' over sqrt(c), c = (n-1)(m-1). Exact, and cheap when n, m << d."""
    f1, f2 = torch.as_tensor(f1, dtype=torch.float64), torch.as_tensor(f2, dtype=torch.float64)
    a, b = f1 - f1.mean(0), f2 - f2.mean(0)
    n, m = len(a), len(b)
    tr_sqrt = torch.linalg.svdvals(a @ b.T).sum() / math.sqrt((n - 1) * (m - 1))
    dmu = f1.mean(0) - f2.mean(0)
    return float(dmu @ dmu + (a * a).sum() / (n - 1) + (b * b).sum() / (m - 1) - 2 * tr_sqrt)


def gaussian_features(n, d, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * scale + shift


# ---- Inception features and the stand-in --------------------------------------------------------------------
def test_inception_features_standin(extractor, features, image_sets, cache):
    assert extractor.random
    assert extractor.weights_path.is_relative_to(cache) and "STANDIN" in extractor.weights_path.name
    with pytest.raises(weights.MissingWeightsError, match="weights-inception-2015-12-05-6726825d.pth"):
        InceptionFeatures("cpu")
    out = features[0]
    assert out.pool.shape == (N_IMAGES, 2048) and out.logits.shape == (N_IMAGES, 1008)
    assert out.spatial.shape == (N_IMAGES, SPATIAL_DIM) == (N_IMAGES, 2023)
    assert all(t.dtype == torch.float64 and torch.isfinite(t).all() for t in out)
    # The same images in NHWC numpy (the .npz layout) give the same features.
    two = image_sets[0][:2]
    assert torch.equal(extractor(two.permute(0, 2, 3, 1).numpy()).pool, out.pool[:2])
    with pytest.raises(TypeError, match="uint8"):
        extractor(torch.rand(1, 3, 8, 8))


def test_spatial_features_are_mixed_6d_branch1x1_in_nhwc_order(extractor, image_sets):
    seen = {}
    h = extractor.net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    try:
        out = extractor(image_sets[0][:2])
    finally:
        h.remove()
    x = seen["x"]
    assert x.shape == (2, 192, 17, 17)
    assert torch.equal(out.spatial.view(2, 17, 17, 7), x[:, :7].permute(0, 2, 3, 1).double())


def test_float64_network(cache, image_sets, features):
    ext64 = InceptionFeatures("cpu", allow_random=True, dtype="float64")
    assert next(ext64.net.parameters()).dtype == torch.float64
    out = ext64(image_sets[0][:2])
    for got, want in zip(out, features[0]):
        torch.testing.assert_close(got, want[:2], rtol=1e-3, atol=1e-4)


def test_standin_features_separate_distributions(features):
    (a, b) = (f.pool[:, :64] for f in features)  # 64 of the 2048 dims: the same answer, 1000x less linear algebra
    half = N_IMAGES // 2
    same = fid_from_stats(FeatureStats.of(a[:half]), FeatureStats.of(a[half:]))
    diff = fid_from_stats(FeatureStats.of(a), FeatureStats.of(b))
    assert diff > 5 * same > 0


# ---- statistics and Frechet distance --------------------------------------------------------------------------
def test_feature_stats_stream_and_merge():
    x = gaussian_features(300, 8, seed=1)
    parts = [FeatureStats(8).update(x[:100]), FeatureStats(8).update(x[100:250]), FeatureStats.of(x[250:])]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    mu, cov = merged.mean_cov()
    assert merged.count == 300
    np.testing.assert_allclose(mu, x.mean(0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), atol=1e-12)  # unbiased (n - 1)
    assert merged.all_reduce() is merged  # no process group: a no-op
    with pytest.raises(ValueError, match="2 samples"):
        FeatureStats(8).mean_cov()


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_fid_of_a_set_with_itself_is_zero(features, method):
    s = FeatureStats.of(gaussian_features(400, 16, seed=2))
    assert abs(fid_from_stats(s, s, method=method)) < 1e-8
    real = FeatureStats.of(features[0].pool[:, :256])  # rank-deficient (N_IMAGES samples)
    assert abs(fid_from_stats(real, real, method=method)) < 1e-6


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_fid_closed_form_for_known_gaussians(method):
    # Diagonal covariances: FID = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0, -1.0]), np.array([1.0, 1.0, 0.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25, 9.0]), np.array([4.0, 1.0, 0.25, 1.0])
    expected = (1 + 0 + 4 + 2.25) + (1 + 1 + 0 + 4)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == pytest.approx(expected, rel=1e-12)
    # A common rotation changes nothing.
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((4, 4)))
    got = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T, method=method)
    assert got == pytest.approx(expected, rel=1e-9)


def test_fid_from_sampled_gaussians_approaches_closed_form():
    d, shift, scale = 8, 0.5, 2.0
    s1 = FeatureStats.of(gaussian_features(20000, d, seed=4))
    s2 = FeatureStats.of(gaussian_features(20000, d, seed=5, shift=shift, scale=scale))
    assert fid_from_stats(s1, s2) == pytest.approx(d * shift**2 + d * (scale - 1) ** 2, rel=0.05)


def test_fid_from_npz_statistics_equals_fid_from_images(features, image_sets, tmp_path):
    (a, b) = features
    ref_pool, ref_spatial = FeatureStats.of(a.pool), FeatureStats.of(a.spatial)
    mu, sigma = ref_pool.mean_cov()
    mu_s, sigma_s = ref_spatial.mean_cov()
    images = image_sets[0].permute(0, 2, 3, 1).numpy()
    path = npz.save_reference_batch(
        tmp_path / "ref.npz", mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s, images=images, metadata={"source": "test"}
    )
    with np.load(path) as f:
        assert {"mu", "sigma", "mu_s", "sigma_s", "arr_0"} <= set(f.files)
    ref = npz.load_reference_batch(path)
    assert np.array_equal(ref.images, images) and ref.metadata == {"source": "test"}
    for key, stats in (("mu", mu), ("sigma", sigma), ("mu_s", mu_s), ("sigma_s", sigma_s)):
        assert np.array_equal(getattr(ref, key), stats), key  # exact round trip, so sFID follows too
    from_npz = frechet_distance(*FeatureStats.of(b.pool).mean_cov(), ref.mu, ref.sigma, method="eigh")
    assert from_npz == pytest.approx(fid_low_rank(b.pool, a.pool), rel=1e-6)
    assert npz.load_reference_batch(path, images=False).images is None


def test_samples_npz_roundtrip(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    meta = {"model": "TiTok-L-32", "steps": 8, "guidance": 4.5, "seed": 42}
    path = npz.save_samples_npz(tmp_path / "samples_TiTok-L-32.npz", imgs, labels=[0, 0, 1, 1, 2, 2], metadata=meta)
    with np.load(path) as f:  # what ADM's evaluator reads
        assert np.array_equal(f["arr_0"], imgs) and f["arr_1"].tolist() == [0, 0, 1, 1, 2, 2]
    s = npz.load_samples_npz(path)
    assert np.array_equal(s.images, imgs) and s.metadata == meta
    with pytest.raises(ValueError, match="uint8"):
        npz.save_samples_npz(tmp_path / "bad.npz", imgs.astype(np.float32))


# ---- Inception Score ------------------------------------------------------------------------------------------
def test_inception_score_adm_formula_by_hand():
    # Two classes. p_a = (3/4, 1/4), p_b = (1/4, 3/4). Split 1 = [a, b]: marginal (1/2, 1/2), each KL is
    # 3/4 ln(3/2) + 1/4 ln(1/2), so IS = (3/2)^(3/4) (1/2)^(1/4). Split 2 = [a, a]: marginal = p_a, IS = 1.
    la, lb = [math.log(3), 0.0], [0.0, math.log(3)]
    logits = torch.tensor([la, lb, la, la], dtype=torch.float64)
    v = 1.5**0.75 * 0.5**0.25
    mean, std = inception_score(logits, splits=2)
    assert mean == pytest.approx((v + 1) / 2, rel=1e-12) and std == pytest.approx((v - 1) / 2, rel=1e-12)
    assert backends.torch_fidelity_isc(logits, splits=2) == pytest.approx((mean, std), rel=1e-12)
    # Confident and spread over 4 classes: IS = 4; identical predictions: IS = 1.
    assert inception_score(torch.eye(4).repeat(2, 1) * 50, splits=2)[0] == pytest.approx(4, rel=1e-6)
    assert inception_score(torch.zeros(10, 5), splits=5) == pytest.approx((1.0, 0.0))


def test_inception_score_matches_torch_fidelity_on_random_logits():
    logits = torch.randn(1000, 1008, generator=torch.Generator().manual_seed(0)) * 3
    assert inception_score(logits) == pytest.approx(backends.torch_fidelity_isc(logits), rel=1e-10)


# ---- precision / recall ---------------------------------------------------------------------------------------
def test_precision_recall_sanity():
    real = torch.from_numpy(gaussian_features(200, 16, seed=6))
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 1000.0) == (0.0, 0.0)
    # Fakes collapsed into the middle of the reals: precise, poor recall.
    fake = torch.from_numpy(gaussian_features(200, 16, seed=7, scale=0.3))
    p, r = precision_recall(real, fake, batch_size=64)
    assert p > 0.9 and r < 0.5
    assert (p, r) == pytest.approx(backends.torch_fidelity_prc(real, fake), abs=1e-12)


# ---- the backends agree -----------------------------------------------------------------------------------------
def test_backends_agree_on_the_same_features():
    f1 = gaussian_features(500, 32, seed=8)
    f2 = gaussian_features(500, 32, seed=9, shift=0.3, scale=1.5)
    s1, s2 = FeatureStats.of(f1), FeatureStats.of(f2)
    ours = fid_from_stats(s1, s2)
    assert ours == pytest.approx(fid_from_stats(s1, s2, method="eigh"), rel=1e-9)
    assert ours == pytest.approx(backends.torch_fidelity_fid(*s1.mean_cov(), *s2.mean_cov()), rel=1e-9)
    assert ours == pytest.approx(backends.torch_fidelity_fid_from_features(f1, f2), rel=1e-9)
    assert ours == pytest.approx(backends.cleanfid_fid(*s1.mean_cov(), *s2.mean_cov()), rel=1e-9)
    assert ours == pytest.approx(backends.cleanfid_fid_from_features(f1, f2), rel=1e-9)
    assert ours == pytest.approx(fid_low_rank(f1, f2), rel=1e-9)


@pytest.mark.slow
def test_torch_fidelity_end_to_end_with_standin(extractor, image_sets, features):
    fake, real = image_sets
    out = backends.torch_fidelity_metrics(fake, real, extractor, isc_splits=2)
    assert extractor.random  # so these numbers are stand-in numbers
    ff, fr = features
    assert out["frechet_inception_distance"] == pytest.approx(fid_low_rank(ff.pool, fr.pool), rel=1e-4)
    isc = backends.torch_fidelity_isc(ff.logits, splits=2)
    assert out["inception_score_mean"] == pytest.approx(isc[0], rel=1e-5)


@pytest.mark.slow
def test_cleanfid_end_to_end_with_standin(extractor, image_sets, features, tmp_path):
    dirs = []
    for name, imgs in zip(("fake", "real"), image_sets):
        d = tmp_path / name
        d.mkdir()
        for i, img in enumerate(imgs.permute(0, 2, 3, 1).numpy()):
            Image.fromarray(img).save(d / f"{i:06d}.png")  # PNG: lossless, the features must not change
        dirs.append(d)
    score = backends.cleanfid_compute_fid(*dirs, extractor, batch_size=10)
    assert score == pytest.approx(fid_low_rank(features[0].pool, features[1].pool), rel=1e-4)


# ---- image metrics and codebook -------------------------------------------------------------------------------
def test_psnr_known_values():
    x = torch.zeros(2, 3, 16, 16, dtype=torch.float64)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 -> 20 dB
    y[1, :, :8] = 1.0  # half the pixels off by 1: MSE 0.5 -> 10 log10(2) dB
    np.testing.assert_allclose(psnr(x, y).numpy(), [20.0, 10 * math.log10(2)], rtol=1e-9)
    assert torch.isinf(psnr(x, x)).all()


def test_ssim_known_values():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    np.testing.assert_allclose(ssim(x, x).numpy(), 1.0, rtol=1e-12)
    # Constant images a and b: no variance, SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.2, 0.6, 0.01**2
    got = ssim(torch.full((1, 3, 16, 16), a, dtype=torch.float64), torch.full((1, 3, 16, 16), b, dtype=torch.float64))
    assert got.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert (ssim(x, noisy) < 0.9).all() and (ssim(x, noisy) > ssim(x, torch.rand(x.shape, generator=g))).all()
    with pytest.raises(ValueError, match="smaller than"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_codebook_usage_and_entropy():
    assert codebook_usage_and_entropy(torch.tensor([[0, 0], [1, 1]]), 4) == (0.5, 1.0)
    usage, ent = codebook_usage_and_entropy(torch.arange(8), 8)
    assert usage == 1.0 and ent == pytest.approx(3.0)
    counts = code_histogram([0, 1], 4) + code_histogram([2, 3, 3, 3], 4)  # add across batches / ranks
    assert usage_and_entropy(counts) == pytest.approx((1.0, -(3 * (1 / 6) * math.log2(1 / 6) + 0.5 * math.log2(0.5))))
    with pytest.raises(ValueError, match="outside"):
        code_histogram([4], 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_matches_cpu(cache, image_sets, features):
    ext = InceptionFeatures("cuda", allow_random=True)
    out = ext(image_sets[0])
    assert out.pool.is_cuda
    torch.testing.assert_close(out.pool.cpu(), features[0].pool, rtol=1e-3, atol=1e-4)  # TF32/cuDNN vs CPU
    stats = FeatureStats.of(out.pool)
    assert stats.sum.is_cuda
    np.testing.assert_allclose(stats.mean_cov()[0], features[0].pool.mean(0).numpy(), rtol=1e-3, atol=1e-4)
    assert precision_recall(out.pool, out.pool) == (1.0, 1.0)
    res = backends.torch_fidelity_metrics(*image_sets, ext, isc=False)
    assert res["frechet_inception_distance"] == pytest.approx(fid_low_rank(*(f.pool for f in features)), rel=1e-2)


def test_inception_score_follows_adms_split_rule():
    """ADM's evaluator scores consecutive chunks of 5,000 samples (the last one shorter): at 7,000 samples that is
    [0, 5000) and [5000, 7000), not ten equal splits."""
    from bench.eval.metrics import ADM_IS_SPLIT_SIZE

    logits = torch.randn(7000, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    chunks = [inception_score(logits[:5000], splits=1)[0], inception_score(logits[5000:], splits=1)[0]]
    assert inception_score(logits, split_size=ADM_IS_SPLIT_SIZE) == pytest.approx(
        (np.mean(chunks), np.std(chunks)), rel=1e-12
    )
    assert inception_score(logits, split_size=ADM_IS_SPLIT_SIZE) != pytest.approx(inception_score(logits, splits=10))
