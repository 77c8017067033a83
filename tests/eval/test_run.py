"""The evaluation runs on toy models, the stand-in Inception and a few synthetic 32 px images: reconstruction
(metric keys and ranges, the uint8 rule, cached real statistics, a 2-process gloo run equal to one process),
generation against a reference batch made from the same images (distances ~0), the linear probe, and the CLI."""

import json

import numpy as np
import pytest
import torch

import models
from bench import tracking as T
from bench import weights
from bench.core.dist import setup
from bench.core.loading import SetupError
from bench.data import build_dataset
from bench.eval.__main__ import main
from bench.eval.generation import evaluate_generation, make_reference_batch, npz_member
from bench.eval.inception import SPATIAL_DIM, InceptionFeatures
from bench.eval.npz import load_reference_batch, save_samples_npz
from bench.eval.probe import encoder_features, linear_probe
from bench.eval.reconstruction import (
    evaluate_reconstruction,
    load_feature_stats,
    real_feature_stats,
    save_feature_stats,
)
from bench.eval.run import decode_tokens, to_uint8
from bench.perceptual import LPIPS
from tests.distributed import join, spawn

N = 10  # images per set: the stand-in Inception costs ~0.1-0.3 s per image here; IS needs >= 10 (10 splits)
TOY = dict(
    encoder_size="toy-S",
    decoder_size="toy-S",
    image_size=32,
    patch_size=8,
    decoder_patch_size=8,
    codebook_size=64,
    token_size=8,
)
RECON_KEYS = {
    "rfid",
    "rfid_is",
    "psnr",
    "ssim",
    "lpips",
    "codebook_usage",
    "codebook_entropy",
    "rfid_num_images",
    "eval_skipped_images",
}


def val_images():
    return build_dataset("synthetic", split="val", image_size=32, train=False, num_images=N)


def toy_teacher():
    torch.manual_seed(0)
    return models.build(
        "MaskGIT-VQGAN", hidden_channels=32, channel_mult=(1, 1, 2, 2), z_channels=32, codebook_size=64
    ).eval()


def toy_stage1_tokenizer(teacher):
    torch.manual_seed(1)
    return models.build("TiTok-S-16", pixel_decoder=False, vqgan=teacher.config, **TOY).eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp_:
        path = tmp_path_factory.mktemp("weights")
        mp_.setenv(weights.ENV_CACHE, str(path))  # os.environ: spawned workers inherit it
        yield path


@pytest.fixture(scope="module")
def inception(cache):
    return InceptionFeatures("cpu", allow_random=True)


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toys")
    teacher = toy_teacher()
    tok = toy_stage1_tokenizer(teacher)
    models.save(teacher, folder / "teacher.safetensors")
    models.save(tok, folder / "tok.safetensors")
    return tok, teacher, folder


@pytest.fixture(scope="module")
def real_stats(inception):
    return real_feature_stats(val_images(), N, inception=inception, batch_size=3)


@pytest.fixture(scope="module")
def recon(toys, inception):
    tok, teacher, _ = toys
    return evaluate_reconstruction(
        tok,
        val_images(),
        num_images=N,
        batch_size=4,
        inception=inception,
        teacher=teacher,
        lpips=LPIPS(allow_random=True),
        fid_method="eigh",
    )


# ---- pixels ---------------------------------------------------------------------------------------------------
def test_uint8_rule():
    x = torch.rand(2, 3, 16, 16) * 1.4 - 0.2
    u = to_uint8(x)
    assert u.dtype == torch.uint8
    # rounding to 1/255 then x255 and truncation is round(255 x) after the clamp (no float32 off-by-one)
    assert torch.equal(u, torch.round(x.clamp(0, 1) * 255).to(torch.uint8))
    grid = torch.arange(256, dtype=torch.float32) / 255  # images that came from uint8 files round-trip exactly
    assert torch.equal(to_uint8(grid), torch.arange(256).to(torch.uint8))
    assert torch.equal(to_uint8(grid, round_first=False), torch.arange(256).to(torch.uint8))
    # the sampling script's rule truncates: 0.999/255 -> 0, not 1
    assert to_uint8(torch.tensor([0.999 / 255]), round_first=False).item() == 0
    assert to_uint8(torch.tensor([0.999 / 255])).item() == 1


def test_stage1_tokenizer_decodes_through_the_teacher(toys):
    tok, teacher, _ = toys
    images = val_images()[0][0][None]
    tokens = tok.encode(images)
    assert torch.equal(decode_tokens(tok, tokens, teacher), teacher.decode(tok.decode_proxy_codes(tokens)))
    with pytest.raises(SetupError, match="stage-1 form"):
        decode_tokens(tok, tokens)


# ---- reconstruction ------------------------------------------------------------------------------------------
def test_reconstruction_keys_and_ranges(recon):
    assert set(recon) == RECON_KEYS
    assert recon["rfid"] > 1.0  # a random tokenizer's reconstructions are far from the reals
    assert recon["rfid_is"] >= 1.0 - 1e-9
    assert 0 < recon["psnr"] < 60 and -1 <= recon["ssim"] <= 1 and recon["lpips"] >= 0
    assert 0 < recon["codebook_usage"] <= 1 and 0 <= recon["codebook_entropy"] <= np.log2(64)
    assert recon["rfid_num_images"] == N


@pytest.mark.slow
def test_cached_real_statistics_give_the_same_rfid(recon, toys, inception, real_stats, tmp_path):
    tok, teacher, _ = toys
    assert real_stats.count == N  # (reals against themselves give FID ~0: see the generation test)
    path = save_feature_stats(real_stats, tmp_path / "real.npz", {"dataset": "synthetic val"})
    loaded, meta = load_feature_stats(path)
    assert meta == {"dataset": "synthetic val", "num_images": N}
    out = evaluate_reconstruction(
        tok,
        val_images(),
        num_images=N,
        batch_size=5,
        inception=inception,
        teacher=teacher,
        real_stats=loaded,
        fid_method="eigh",
    )
    assert out["rfid"] == pytest.approx(recon["rfid"], rel=1e-5)
    assert out["psnr"] == pytest.approx(recon["psnr"], rel=1e-9) and "lpips" not in out
    with pytest.raises(SetupError, match="real_stats hold"):
        evaluate_reconstruction(
            tok, val_images(), num_images=N - 1, inception=inception, teacher=teacher, real_stats=loaded
        )


@pytest.mark.slow
def test_vae_tokenizer_has_no_codebook_metrics(inception, real_stats):
    torch.manual_seed(2)
    vae = models.build("TiTok-S-16-VAE", **{**TOY, "token_size": 4})
    out = evaluate_reconstruction(
        vae, val_images(), num_images=N, inception=inception, real_stats=real_stats, fid_method="eigh"
    )
    assert set(out) == RECON_KEYS - {"lpips", "codebook_usage", "codebook_entropy"}


def _recon_worker(rank, world, port, folder):
    join(rank, world, port)
    info = setup("cpu")
    tok, teacher = models.load(f"{folder}/tok.safetensors"), models.load(f"{folder}/teacher.safetensors")
    out = evaluate_reconstruction(
        tok,
        val_images(),
        num_images=N,
        batch_size=4,
        info=info,
        inception=InceptionFeatures("cpu", allow_random=True),
        teacher=teacher,
        lpips=LPIPS(allow_random=True),
        fid_method="eigh",
    )
    with open(f"{folder}/recon{rank}.json", "w") as f:
        json.dump(out, f)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_the_single_process_result(recon, toys, cache):
    folder = toys[2]
    spawn(_recon_worker, 2, str(folder))
    results = [json.loads((folder / f"recon{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1]  # every rank returns the main rank's numbers
    for key, value in recon.items():
        assert results[0][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


# ---- generation ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_generation_against_its_own_reference_batch(inception, tmp_path):
    ds = val_images()
    path = make_reference_batch(ds, N, inception, tmp_path / "ref.npz", batch_size=4, metadata={"why": "test"})
    ref = load_reference_batch(path)
    assert ref.mu.shape == (2048,) and ref.sigma.shape == (2048, 2048)
    assert ref.mu_s.shape == (SPATIAL_DIM,) and ref.sigma_s.shape == (SPATIAL_DIM, SPATIAL_DIM)
    reals = torch.stack([ds[i][0] for i in range(N)])
    assert np.array_equal(ref.images, to_uint8(reals).permute(0, 2, 3, 1).numpy())
    assert ref.labels.tolist() == [ds[i][1] for i in range(N)]
    assert ref.metadata["why"] == "test" and ref.metadata["inception_random"] is True
    assert np.array_equal(npz_member(path, "arr_0"), ref.images)  # the memory-mapped read

    samples = save_samples_npz(
        tmp_path / "samples.npz", ref.images, ref.labels, {"sampler": {"num_steps": 8}, "seed": 42}
    )
    out = evaluate_generation(
        samples,
        path,
        inception=inception,
        batch_size=4,
        fid_method="eigh",
        clean_fid=False,
        metadata={"note": "reference images as samples"},
    )
    assert abs(out["gfid"]) < 1e-2 and abs(out["sfid"]) < 1e-2
    assert out["precision"] == 1.0 and out["recall"] == 1.0
    assert out["gfid_is"] >= 1.0 - 1e-9 and out["gfid_num_samples"] == N
    assert out["samples"] == {"sampler": {"num_steps": 8}, "seed": 42, "note": "reference images as samples"}
    with pytest.raises(SetupError, match="does not exist"):
        evaluate_generation(samples, tmp_path / "missing.npz", inception=inception)
    # ADM's Inception Score takes chunks of 5,000 (the last one shorter): any count makes one
    few = evaluate_generation(
        ref.images[:5], path, inception=inception, batch_size=4, fid_method="eigh", clean_fid=False
    )
    assert few["gfid_num_samples"] == 5 and few["gfid_is"] >= 1.0 - 1e-9


# ---- linear probe --------------------------------------------------------------------------------------------
def test_linear_probe_on_synthetic_classes():
    torch.manual_seed(0)
    tok = models.build("TiTok-S-16-VQ", **TOY)
    train = build_dataset("synthetic", split="train", image_size=32, train=False, num_images=200)
    val = build_dataset("synthetic", split="val", image_size=32, train=False, num_images=100)
    feats = encoder_features(tok, val[0][0][None])
    assert feats.shape == (1, 64) and not tok.encoder.ln_post._forward_hooks  # the hook is gone again
    out = linear_probe(tok, train, val, num_train=200, num_val=100, epochs=50)
    assert set(out) == {"probe_top1", "probe_top1_lo", "probe_top1_hi"}
    assert out["probe_top1_lo"] <= out["probe_top1"] <= out["probe_top1_hi"]
    # seen: 0.38 on 10 classes with this random-init encoder (chance 0.1): its features still carry shape/colour
    assert 0.2 < out["probe_top1"] <= 1.0


# ---- command line --------------------------------------------------------------------------------------------
def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "python -m bench.eval TiTok-L-32" in text and "--allow-random-weights" in text


def test_cli_clear_errors(toys, cache, tmp_path, capsys):
    ckpt = str(toys[2] / "tok.safetensors")
    assert main([ckpt, "--data", "imagenet", "--data-root", str(tmp_path / "nowhere"), "--allow-random-weights"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([ckpt, "--data", "imagenet", "--allow-random-weights"]) == 2
    assert "needs a root" in capsys.readouterr().err
    assert main(["TiTok-L-32", "--data", "synthetic"]) == 2  # released weights not in the (empty) cache
    err = capsys.readouterr().err
    assert "missing pretrained weights 'TiTok-L-32'" in err and "Traceback" not in err
    assert (
        main(
            [
                ckpt,
                "--metrics",
                "gfid",
                "--generator",
                "MaskGIT-ViT",
                "--reference-batch",
                str(tmp_path / "missing.npz"),
                "--allow-random-weights",
            ]
        )
        == 2
    )
    assert "reference batch" in capsys.readouterr().err
    assert main([ckpt, "--metrics", "fid"]) == 2
    assert "choose from" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_end_to_end_with_stand_ins(toys, cache, tmp_path, capsys):
    tok, _, folder = toys
    torch.manual_seed(3)
    gen = models.build(
        "MaskGIT-ViT",
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=128,
        num_tokens=16,
        codebook_size=64,
        num_classes=10,
    )
    models.save(gen, folder / "gen.safetensors")
    out = tmp_path / "result.json"
    argv = [
        str(folder / "tok.safetensors"),
        "--teacher",
        str(folder / "teacher.safetensors"),
        "--generator",
        str(folder / "gen.safetensors"),
        "--metrics",
        "rfid,gfid,probe",
        "--data",
        "synthetic",
        "--num-images",
        str(N),
        "--num-samples",
        str(N),
        "--probe-num-train",
        "50",
        "--probe-epochs",
        "10",
        "--reference-batch",
        str(tmp_path / "ref.npz"),
        "--make-reference-batch",
        "--samples-dir",
        str(tmp_path / "samples"),
        "--num-steps",
        "4",
        "--seed",
        "1",
        "--fid-method",
        "eigh",
        "--inception-dtype",
        "float32",
        "--batch-size",
        "5",
        "--num-workers",
        "0",
        "--allow-random-weights",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "RANDOM STAND-IN WEIGHTS (inception)" in printed
    report = json.loads(out.read_text())
    assert report["random"] is True and report["weights_random"] == {
        "tokenizer": False,
        "teacher": False,
        "inception": True,
        "generator": False,
    }
    m = report["metrics"]
    point = (RECON_KEYS - {"lpips"}) | {
        "gfid",
        "gfid_clean",
        "gfid_is",
        "sfid",
        "precision",
        "recall",
        "gfid_num_samples",
        "probe_top1",
    }
    intervals = {key for name in set(T.INTERVAL_METRICS) & point for key in T.interval_keys(name)}
    assert set(m) == point | intervals  # each number with its interval
    for name in set(T.INTERVAL_METRICS) & point:
        lo, hi = T.interval_keys(name)
        assert m[lo] <= m[name] <= m[hi], name
    assert m["gfid_clean"] == pytest.approx(m["gfid"], rel=1e-3)  # two backends, the same statistics
    assert m["rfid_num_images"] == N and m["gfid_num_samples"] == N and 0 <= m["probe_top1"] <= 1
    sampler = report["samples"]["sampler"]
    assert sampler["num_steps"] == 4 and sampler["guidance_scale"] == gen.config.sampler.guidance_scale
    assert report["samples"]["path"].endswith(f"_steps4_cfg4.5-linear_temp9.5_seed1_n{N}.npz")
    assert report["data"]["name"] == "synthetic" and report["tokenizer"] == "tok"
    assert report["inception_dtype"] == {"rfid": "float32", "gfid": "float32"}  # --inception-dtype, both protocols
