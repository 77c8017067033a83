"""Stage 1's schedule aids for toy models (Stage1Config.decoder_warmup_fraction, continuous_fraction): the decoder
learns alone first while the rest's learning rate is 0 and then ramps in; the decoder reads the unquantised
latents until the switch step, where the codebook becomes a k-means of that batch's latents. And the pieces:
the quantiser's continuous pass-through, its k-means, per-part learning rates."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import models
from bench.core.loading import vqgan_overrides
from bench.train.optim import param_groups
from bench.train.recipes import Stage1Config
from bench.train.tokenizer import stage1_objective
from bench.train.trainer import Trainer
from models.quantizers import VectorQuantizer
from tests.train.test_training import stage1_cfg


def test_continuous_quantizer_passes_the_latents_and_keeps_the_codes():
    torch.manual_seed(0)
    q = VectorQuantizer(4, 3, use_l2_norm=True)
    z = torch.randn(2, 3, 1, 5, requires_grad=True)
    quantized = q(z)
    q.continuous = True
    passed = q(z)
    torch.testing.assert_close(passed.z_quantized, F.normalize(z, dim=1))
    assert torch.equal(passed.indices, quantized.indices)
    assert passed.loss.item() == 0.0 and quantized.loss.item() > 0
    passed.loss.backward()  # the codebook stays in the graph (DDP expects a gradient for every parameter)
    assert q.embedding.weight.grad is not None and not q.embedding.weight.grad.any()


def test_kmeans_codebook_finds_the_clusters():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    points = centres.repeat(50, 1) + 0.02 * torch.randn(200, 8, generator=g)  # [200, 8]: 50 around each centre
    q = VectorQuantizer(4, 8, use_l2_norm=True)
    q.init_codebook(points.T.reshape(1, 8, 1, 200), generator=torch.Generator().manual_seed(1))
    cosine = q.codebook() @ centres.T  # [code, centre]
    assert sorted(cosine.argmax(1).tolist()) == [0, 1, 2, 3]  # one code per cluster
    assert cosine.max(1).values.min() > 0.99


def test_param_groups_by_part():
    net = torch.nn.ModuleDict({"encoder": torch.nn.Linear(2, 2), "decoder": torch.nn.Linear(2, 2)})
    plain = param_groups(net, 0.1)
    assert [g["part"] for g in plain] == ["", ""] and [len(g["params"]) for g in plain] == [2, 2]
    parts = param_groups(net, 0.1, lambda name: name.split(".")[0])
    assert [(g["part"], g["weight_decay"], len(g["params"])) for g in parts] == [
        ("decoder", 0.1, 1),
        ("decoder", 0.0, 1),
        ("encoder", 0.1, 1),
        ("encoder", 0.0, 1),
    ]


@pytest.mark.parametrize("key", ["decoder_warmup_fraction", "continuous_fraction"])
@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_aids_are_shares_of_the_schedule(key, value):
    with pytest.raises(ValueError, match=f"{key}={value}: must be a share of loop.steps"):
        replace(stage1_cfg(10), **{key: value})


def _toy_stage1(cfg: Stage1Config, quantizer: str = "vq"):
    torch.manual_seed(0)
    teacher = models.build("MaskGIT-VQGAN", **vqgan_overrides(cfg.teacher.overrides)).eval()
    tokenizer = models.build(
        cfg.model,
        **dict(cfg.model_overrides, pixel_decoder=False, vqgan=teacher.config, image_size=32, quantizer=quantizer),
    )
    return tokenizer, teacher


def test_decoder_warmup_then_continuous_then_kmeans_vq():
    cfg = replace(stage1_cfg(10), decoder_warmup_fraction=0.3, continuous_fraction=0.6)
    assert (cfg.decoder_warmup_steps, cfg.continuous_steps) == (3, 6)
    tokenizer, teacher = _toy_stage1(cfg)
    trainer = Trainer(stage1_objective(cfg, tokenizer, teacher), cfg.loop)
    batch = (torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.zeros(8, dtype=torch.long))

    def state(prefix):
        return {k: v.clone() for k, v in tokenizer.state_dict().items() if k.startswith(prefix)}

    encoder, decoder, codebook = state("encoder."), state("decoder."), tokenizer.quantize.embedding.weight.clone()
    for step in range(4):  # lr factor (step - 3) / 3: 0 up to step 3
        logs = trainer.step(step, batch)
        assert tokenizer.quantize.continuous
    assert all(torch.equal(v, state("encoder.")[k]) for k, v in encoder.items())  # the encoder has not moved
    assert not all(torch.equal(v, state("decoder.")[k]) for k, v in decoder.items())
    assert 0 < logs["stage1/distinct_sequences"] <= 1 and logs["stage1/quantizer"] == 0.0
    trainer.step(4, batch)
    assert not all(torch.equal(v, state("encoder.")[k]) for k, v in encoder.items())  # ramping in
    trainer.step(5, batch)
    assert tokenizer.quantize.continuous and torch.equal(tokenizer.quantize.embedding.weight, codebook)
    logs = trainer.step(6, batch)  # the switch: a k-means codebook of this batch's latents, then VQ
    assert not tokenizer.quantize.continuous and logs["stage1/quantizer"] > 0
    assert not torch.allclose(tokenizer.quantize.embedding.weight, codebook)
    with torch.no_grad():
        used = tokenizer.quantize_latents(tokenizer.forward_encoder(batch[0])).indices.unique()
    assert len(used) > 1  # the codes sit among the latents, not one far-off code for all


def test_continuous_needs_a_vq_tokenizer():
    cfg = replace(stage1_cfg(10), continuous_fraction=0.5)
    tokenizer, teacher = _toy_stage1(cfg, quantizer="vae")
    with pytest.raises(ValueError, match="continuous_steps=5 needs a VQ tokenizer"):
        stage1_objective(cfg, tokenizer, teacher)


def test_distinct_sequences_is_computed_on_log_steps_only(monkeypatch, tmp_path):
    """The metric's torch.unique reads the device (its output size depends on the data): log steps only."""
    from bench.train.tokenizer import train_stage1

    cfg = stage1_cfg(4)
    cfg = replace(cfg, loop=replace(cfg.loop, log_every=2))
    real, calls = torch.unique, []

    def unique(*args, **kwargs):
        calls.append(kwargs.get("dim"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "unique", unique)
    logged = {}
    train_stage1(cfg, tmp_path, lambda metrics, step: logged.update({step: metrics}))
    assert sorted(logged) == [2, 4] and calls.count(0) == 2
    assert all(0 < m["stage1/distinct_sequences"] <= 1 for m in logged.values())
