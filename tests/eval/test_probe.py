"""The linear probe's feature setting: each choice reads the features it names (checked against a
hook of the test's own on the encoder's last block), an unknown choice is a one-line error at every door (the
function, the stage, the plan, the CLI), the probe stage fits on train-split images and scores on its `split`, and
the stage records the choice as the tag titok.probe_features and counts it in its identity."""

import pytest
import torch

import models
from bench.core.loading import SetupError
from bench.data import build_dataset
from bench.eval import probe as eval_probe
from bench.eval.__main__ import parse_args
from bench.eval.probe import FEATURES, encoder_features, linear_probe
from bench.plan import PlanError, make_plan
from bench.stages import Context, DataConfig, ProbeSpec, probe
from tests.sweep.test_plan import changed_by, config, stages_of

TOY = dict(
    encoder_size="toy-S",
    decoder_size="toy-S",
    image_size=32,
    patch_size=8,
    decoder_patch_size=8,
    codebook_size=64,
    token_size=8,
)
K = 16


def toy_tokenizer():
    torch.manual_seed(0)
    return models.build(f"TiTok-S-{K}-VQ", **TOY).eval()


def images(n=3):
    val = build_dataset("synthetic", split="val", image_size=32, train=False, num_images=n)
    return torch.stack([val[i][0] for i in range(n)])


def test_each_setting_reads_the_features_it_names():
    tok, x = toy_tokenizer(), images()
    seen = []
    handle = tok.encoder.transformer[-1].register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        got = {name: encoder_features(tok, x, name) for name in FEATURES}
    finally:
        handle.remove()
    last = seen[0]  # [B, 1 + g*g + K, W]: the class token, the patch tokens, the latent tokens
    grid = 32 // 8
    assert last.shape[1] == 1 + grid * grid + K
    with torch.no_grad():
        want = {
            "latent_mean": tok.encoder.ln_post(last[:, -K:]).mean(1),
            "latent_mean_pre_ln": last[:, -K:].mean(1),
            "patch_mean": last[:, 1 : 1 + grid * grid].mean(1),
        }
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == (3, 64) and got[name].dtype == torch.float32
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6)
    # three different vectors, and the default is today's (the latent tokens after ln_post)
    assert not torch.allclose(got["latent_mean"], got["latent_mean_pre_ln"])
    assert not torch.allclose(got["latent_mean"], got["patch_mean"])
    torch.testing.assert_close(encoder_features(tok, x), got["latent_mean"], rtol=0, atol=0)
    assert not tok.encoder.ln_post._forward_hooks and not tok.encoder.transformer[-1]._forward_hooks


def test_an_unknown_setting_is_a_one_line_error(tmp_path, capsys):
    tok, x = toy_tokenizer(), images(1)
    message = "probe features 'cls_token': choose one of latent_mean, latent_mean_pre_ln, patch_mean"
    with pytest.raises(ValueError) as err:
        encoder_features(tok, x, "cls_token")
    assert str(err.value) == message
    with pytest.raises(ValueError, match="choose one of"):
        linear_probe(tok, None, None, num_train=1, num_val=1, features="cls_token")  # before any image is read
    spec = ProbeSpec(
        tokenizer="nowhere",
        data=DataConfig(name="synthetic", image_size=32),
        num_train=1,
        num_val=1,
        features="cls_token",
    )
    with pytest.raises(SetupError) as err:  # before the tokenizer is loaded
        probe.run(spec, Context(tmp_path))
    assert str(err.value) == message
    with pytest.raises(PlanError) as err:
        make_plan(config("preset.eval.probe_features=cls_token", tmp_path=tmp_path))
    assert str(err.value) == f"preset.eval.probe_features: {message}" and "\n" not in str(err.value)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["tok.safetensors", "--probe-features", "cls_token"])
    assert exit_info.value.code == 2
    assert "--probe-features: invalid choice: 'cls_token'" in capsys.readouterr().err
    assert parse_args(["tok.safetensors"]).probe_features == "latent_mean"


def test_the_stage_fits_on_the_train_split_and_records_the_setting(tmp_path, monkeypatch):
    path = tmp_path / "tok.safetensors"
    models.save(toy_tokenizer(), path)
    calls = []
    real = eval_probe.linear_probe

    def spy(tokenizer, train_dataset, val_dataset, **kw):
        calls.append((train_dataset.describe(), val_dataset.describe(), kw["features"]))
        return real(tokenizer, train_dataset, val_dataset, **kw)

    monkeypatch.setattr(eval_probe, "linear_probe", spy)
    data = DataConfig(name="synthetic", image_size=32, num_classes=4, num_workers=0, seed=0)
    results = {}
    for features in ("latent_mean", "patch_mean"):
        spec = ProbeSpec(
            tokenizer=str(path),
            data=data,
            num_train=24,
            num_val=12,
            epochs=5,
            features=features,
            batch_size=12,
            device="cpu",
        )
        results[features] = probe.run(spec, Context(tmp_path / features))
    for (train, val, features), name in zip(calls, ("latent_mean", "patch_mean")):
        assert train["split"] == "train" and train["len"] == 24  # the classifier's images: the train split
        assert val["split"] == "val" and val["len"] == 12
        assert features == name
    for name, result in results.items():
        assert result["tags"]["titok.probe_features"] == name
        assert "Wilson" in result["tags"]["titok.probe_interval"]
        m = result["metrics"]
        assert m["probe_top1_lo"] <= m["probe_top1"] <= m["probe_top1_hi"]
        assert 0.0 <= result["metrics"]["probe_top1"] <= 1.0 and result["data"]["split"] == "val"
    # the training images differ from the scored ones (a probe fitted on its validation images would score them)
    train_ds = build_dataset("synthetic", split="train", image_size=32, train=False, num_images=24, num_classes=4)
    val_ds = build_dataset("synthetic", split="val", image_size=32, train=False, num_images=12, num_classes=4)
    assert not torch.equal(train_ds[0][0], val_ds[0][0])


def test_the_setting_is_part_of_the_probes_identity_only(tmp_path):
    assert stages_of(changed_by("preset.eval.probe_features=patch_mean", tmp_path=tmp_path)) == {"probe"}
    plan = make_plan(config("preset.eval.probe_features=latent_mean_pre_ln", tmp_path=tmp_path))
    assert {t.spec.features for t in plan.tasks() if t.stage == "probe"} == {"latent_mean_pre_ln"}
