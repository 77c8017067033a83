"""bench.speed on toy sizes: the parity path equals the reference sampler and the models' own encode/decode
exactly, the fast paths stay within measured quality bounds of it, the analytic FLOP counter matches a hand count
and torch's FlopCounterMode, a timed training step is one step of the real training loop, and the CLI runs end to
end. Correctness only: no timing assertions."""

import dataclasses
import itertools
import json
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import models
from bench.perceptual import LPIPS, ConvNeXtLogits
from bench.speed import cli, factories, measure, training
from bench.speed import flops as FL
from bench.speed.paths import (
    EXACT_GUARD,
    InferenceOptions,
    InferencePipeline,
    QualityGuard,
    compare_with_parity,
    fallback_note,
    fast_options,
    mode_options,
)
from bench.speed.scaling import scaling, scaling_flops
from bench.stages.speed import speed_path
from bench.train.loop import train
from bench.train.losses import NLayerDiscriminator
from models.maskgit_vqgan import VQGANConfig

# Bounds of the bf16 fast path against fp32 on these toy models with random weights, measured over seeds 0-3
# (token agreement 1.0, image PSNR >= 35.7 dB, VQ encode agreement >= 0.94, single-stage decode PSNR >= 78.7 dB,
# VAE encode relative error <= 0.006), with margin. Random weights make VQ assignments near-ties, so the encode
# agreement is the loosest.
MIN_TOKEN_AGREEMENT = 0.9
MIN_IMAGE_PSNR = 30.0
MIN_ENCODE_AGREEMENT = 0.85
MIN_SINGLE_STAGE_PSNR = 60.0
MAX_VAE_REL_ERROR = 0.02


def toy_pair(tokenizer="TiTok-L-32", generator="MaskGIT-ViT:TiTok-L-32", seed=0, **tok_set):
    torch.manual_seed(seed)
    tok = factories.build_tokenizer(tokenizer, tok_set, toy=True)
    return tok, factories.build_generator(generator, tok, toy=True)


def rng(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- parity path ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("generator,steps", [("MaskGIT-ViT:TiTok-L-32", None), ("MaskGIT-UViT:TiTok-S-128", 6)])
@pytest.mark.parametrize("mode", ["naive", "parity"])
def test_exact_modes_equal_reference_sampler(generator, steps, mode):
    tok, gen = toy_pair(generator=generator)
    settings = gen.config.sampler if steps is None else gen.config.sampler.updated(num_steps=steps)
    labels = torch.tensor([0, 7, 3])
    ids, images = InferencePipeline(tok, gen, options=mode).generate(labels, settings, rng(1))
    reference = gen.generate(labels, generator=rng(1), **settings.__dict__)  # separate cond/uncond passes
    assert torch.equal(ids, reference)
    assert torch.equal(images, tok.decode(reference))


def test_exact_options_equal_reference_with_every_cpu_switch():
    """fp32 switches that only change layout or bookkeeping (channels-last copies, weight copies) are exact."""
    tok, gen = toy_pair()
    labels = torch.tensor([1, 2])
    options = InferenceOptions(cast_weights=True, channels_last=True)
    ids, images = InferencePipeline(tok, gen, options=options).generate(labels, rng=rng(2))
    assert torch.equal(ids, gen.generate(labels, generator=rng(2)))
    assert torch.equal(images, tok.decode(ids))


@pytest.mark.parametrize(
    "name,extra", [("TiTok-BL-64-VQ", {}), ("TiTok-BL-64-VAE", {}), ("TA-TiTok-BL-32-VQ", {}), ("TiTok-S-32", {})]
)
def test_parity_encode_decode_equal_model(name, extra):
    torch.manual_seed(0)
    tok = factories.build_tokenizer(name, extra, toy=True)
    c = tok.config
    images = torch.rand(2, 3, c.image_size, c.image_size)
    text = torch.randn(2, c.text_tokens, c.text_dim) if c.text_tokens else None
    pipe = InferencePipeline(tok, options="parity")
    tokens = pipe.encode(images)
    assert torch.equal(tokens, tok.encode(images))
    assert torch.equal(pipe.decode(tokens, text), tok.decode(tokens, text=text))


def test_stage1_form_decodes_through_the_teacher():
    torch.manual_seed(0)
    tok = factories.build_tokenizer("TiTok-L-32", {"pixel_decoder": False}, toy=True)
    teacher = factories.teacher_for(tok)
    assert teacher is not None and not tok.outputs_pixels
    ids = torch.randint(0, tok.config.codebook_size, (2, tok.config.num_latent_tokens))
    expected = teacher.decode(tok.decode_proxy_codes(ids))
    assert torch.equal(InferencePipeline(tok, options="parity", teacher=teacher).decode(ids), expected)
    with pytest.raises(ValueError, match="teacher"):
        InferencePipeline(tok, options="parity").decode(ids)


def test_pipeline_leaves_the_models_untouched():
    tok, gen = toy_pair()
    before = {k: v.clone() for k, v in [*tok.state_dict().items(), *gen.state_dict().items()]}
    pipe = InferencePipeline(tok, gen, options=fast_options())
    pipe.generate(torch.tensor([0, 1]), rng=rng())
    after = {**tok.state_dict(), **gen.state_dict()}
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    assert tok.pixel_decoder.conv_in.weight.is_contiguous()


# ---- fast path quality guard ---------------------------------------------------------------------------------------
# the bf16 switches themselves (fast_options), whether or not this CPU runs bf16 quickly: their numerics are tested
BF16 = fast_options("cpu")


@pytest.mark.parametrize("generator,steps", [("MaskGIT-ViT:TiTok-L-32", None), ("MaskGIT-UViT:TiTok-S-128", 8)])
def test_fast_path_generation_quality(generator, steps):
    tok, gen = toy_pair(generator=generator)
    settings = gen.config.sampler if steps is None else gen.config.sampler.updated(num_steps=steps)
    q = compare_with_parity(tok, gen, options=BF16, batch_size=8, seed=0, sampler_settings=settings)
    assert q["token_agreement"] >= MIN_TOKEN_AGREEMENT
    assert q["image_psnr_db"] >= MIN_IMAGE_PSNR
    assert q["decode_psnr_db"] >= MIN_IMAGE_PSNR
    assert q["encode_agreement"] >= MIN_ENCODE_AGREEMENT


def test_fast_path_single_stage_quality():
    torch.manual_seed(0)
    q = compare_with_parity(factories.build_tokenizer("TiTok-BL-64-VQ", toy=True), options=BF16, batch_size=8)
    assert q["decode_psnr_db"] >= MIN_SINGLE_STAGE_PSNR and q["encode_agreement"] >= MIN_ENCODE_AGREEMENT
    q = compare_with_parity(factories.build_tokenizer("TiTok-BL-64-VAE", toy=True), options=BF16, batch_size=8)
    assert q["decode_psnr_db"] >= MIN_SINGLE_STAGE_PSNR and q["encode_rel_error"] <= MAX_VAE_REL_ERROR


def test_parity_against_itself_is_perfect():
    tok, gen = toy_pair()
    q = compare_with_parity(tok, gen, options="parity", batch_size=2)
    assert q == {
        "token_agreement": 1.0,
        "image_psnr_db": float("inf"),
        "decode_psnr_db": float("inf"),
        "encode_agreement": 1.0,
    }


def bf16_rate(monkeypatch, rate: float) -> None:
    """This CPU's bf16 matmul rate as `rate`% of fp32 (the probe of bench.core.dist)."""
    from bench.core import dist as D

    rates = {torch.float32: 100.0, torch.bfloat16: rate}
    monkeypatch.setattr(D, "_matmul_rate", lambda device_type, dtype: rates[dtype])


def test_modes(monkeypatch):
    bf16_rate(monkeypatch, 150.0)
    assert mode_options("parity").exact and mode_options("naive").exact
    assert not mode_options("naive").batch_guidance and not mode_options("naive").inference_mode
    fast_cpu, fast_gpu = mode_options("fast", "cpu"), mode_options("fast", "cuda")
    assert fast_cpu.precision == "bf16" and not fast_cpu.cuda_graphs and fast_gpu.cuda_graphs
    assert mode_options("compiled").compile
    with pytest.raises(ValueError, match="unknown inference mode"):
        mode_options("turbo")
    with pytest.raises(ValueError, match="precision"):
        InferenceOptions(precision="int8")


@pytest.mark.parametrize("rate, expected", [(1.0, "parity"), (150.0, "fast")])
def test_auto_mode_takes_fast_only_where_bf16_matmuls_are_fast(monkeypatch, rate, expected):
    """`auto` is `fast` on a CPU with bf16 units (and on CUDA), `parity` on one without (bf16 at ~1% of fp32)."""
    bf16_rate(monkeypatch, rate)
    assert mode_options("auto", "cpu") == mode_options(expected, "cpu")
    assert mode_options("auto", "cuda") == mode_options("fast", "cuda")
    tok, gen = toy_pair()
    pipe = InferencePipeline(tok, gen, options="auto")
    assert pipe.choice.mode == expected and pipe.options == (BF16 if expected == "fast" else InferenceOptions())
    if expected == "fast":  # it passed the guard on its probe batch, and says so with the numbers
        assert "passed the quality guard" in pipe.choice.reason and pipe.choice.quality["token_agreement"] >= 0.9
    else:  # no probe: fast is parity's path here
        assert "0.01x the fp32 rate" in pipe.choice.reason and not pipe.choice.quality


def test_fast_is_never_slower_than_parity_where_bf16_is_slow(monkeypatch):
    """On a CPU whose bf16 matmuls are slow, `fast` runs parity's own fp32 path (so it cannot be slower), and the
    row says so; where bf16 is fast it keeps bf16."""
    bf16_rate(monkeypatch, 1.3)
    assert mode_options("fast", "cpu") == InferenceOptions() and mode_options("compiled", "cpu").exact
    assert "fast runs parity's fp32 path" in fallback_note("fast", "cpu")
    tok, gen = toy_pair()
    row = measure.measure_generation(
        tok, gen, batch_size=1, sampler_settings={"num_steps": 2}, mode="fast", warmup=0, repeats=1
    )
    assert row["path"] == "fast" and row["precision"] == "fp32" and "parity's fp32 path" in row["note"]
    assert mode_options("fast", "cuda").precision == "bf16"  # CUDA runs bf16 on tensor cores
    bf16_rate(monkeypatch, 150.0)
    assert mode_options("fast", "cpu") == BF16 and fallback_note("fast", "cpu") is None


def test_auto_falls_back_to_parity_when_fast_fails_the_guard(monkeypatch):
    bf16_rate(monkeypatch, 150.0)
    tok, gen = toy_pair()
    strict = QualityGuard(min_decode_psnr_db=1000.0, batch_size=2)
    pipe = InferencePipeline(
        tok, gen, options="auto", guard=strict, probe_settings=gen.config.sampler.updated(num_steps=2)
    )
    assert pipe.choice.mode == "parity" and pipe.options.exact
    assert "failed the quality guard: decode_psnr_db" in pipe.choice.reason and "needs >= 1000" in pipe.choice.reason
    # the exact guard (evaluation sampling) admits exact paths only, without a probe
    exact = InferencePipeline(tok, gen, options="auto", guard=EXACT_GUARD)
    assert exact.choice.mode == "parity" and "exact fp32 paths only" in exact.choice.reason
    assert exact.describe() == "parity (fp32+batch_guidance+inference_mode)"
    # the speed stage's tag: asked-for mode, the path that ran, why
    row = {"path": pipe.choice.mode, "options": pipe.options.describe(), "note": pipe.choice.reason}
    assert speed_path("auto", row).startswith("auto -> parity (fp32+batch_guidance+inference_mode): fast failed")


def test_guard_failures_name_each_check():
    assert QualityGuard().failures({"token_agreement": 1.0, "image_psnr_db": 40.0, "encode_agreement": 0.95}) == []
    failed = QualityGuard().failures({"token_agreement": 0.5, "encode_rel_error": 0.1, "decode_psnr_db": 31.0})
    assert failed == ["token_agreement 0.5 (needs >= 0.9)", "encode_rel_error 0.1 (needs <= 0.02)"]
    tok, gen = toy_pair()
    with pytest.raises(ValueError, match="CUDA"):
        InferencePipeline(tok, gen, options=InferenceOptions(cuda_graphs=True))


# ---- FLOP counter --------------------------------------------------------------------------------------------------
def counted(fn) -> int:
    """torch's own count of the matmul/conv FLOPs of fn (SDPA through the math backend, which it can see)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as mode, torch.no_grad():
        fn()
    return mode.get_total_flops()


def test_flops_hand_count_tiny_generator():
    # BERT layout, K = 3 tokens + class token (n = 4), width 8, MLP 16, one layer, codebook 5
    c = models.GeneratorConfig(
        hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16, num_tokens=3, codebook_size=5, num_classes=2
    )
    qkv, scores, weighted_sum, out = 2 * 4 * 8 * 24, 2 * 4 * 4 * 8, 2 * 4 * 4 * 8, 2 * 4 * 8 * 8
    mlp, head = 2 * 4 * 8 * 16 * 2, 2 * 3 * 8 * 5
    assert FL.generator_forward(c) == qkv + scores + weighted_sum + out + mlp + head == 4848
    settings = models.SamplerSettings(num_steps=4, guidance_scale=2.0, guidance_decay="linear")
    assert FL.generator_forwards(settings) == 1 + 2 * 3  # the linear schedule's first step has no guidance
    gen = models.build_from_config(c).eval()
    assert counted(lambda: gen(torch.zeros(1, 3, dtype=torch.long), torch.tensor([1]))) == 4848
    assert counted(lambda: gen.generate(torch.tensor([1]), **settings.__dict__)) == 7 * 4848


def test_flops_hand_count_tiny_pixel_decoder():
    # f2 VQGAN: widths (32, 64), one res block per level, z 8 channels, 2x2 code grid -> 4x4 image
    cfg = VQGANConfig(hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, z_channels=8, codebook_size=4)

    def conv(hw, cin, cout, k):
        return 2 * hw * hw * cin * cout * k * k

    hand = (
        conv(2, 8, 64, 3)
        + 2 * conv(2, 64, 64, 3)  # conv_in, mid block
        + 2 * conv(2, 64, 64, 3)
        + conv(4, 64, 64, 3)  # up[1] block, upsample conv
        + conv(4, 64, 32, 3)
        + conv(4, 32, 32, 3)
        + conv(4, 32, 32, 1)  # up[0] block with its shortcut
        + conv(4, 32, 3, 3)
    )  # conv_out
    assert FL.vqgan_decoder(cfg, 2) == hand
    decoder = models.build(
        "MaskGIT-VQGAN", hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, z_channels=8, codebook_size=4
    ).decoder
    assert counted(lambda: decoder(torch.randn(1, 8, 2, 2))) == hand


@pytest.mark.parametrize("name", ["TiTok-L-32", "TiTok-BL-64-VQ", "TiTok-BL-64-VAE", "TA-TiTok-BL-32-VQ"])
def test_flops_match_torch_counter_for_tokenizers(name):
    torch.manual_seed(0)
    tok = factories.build_tokenizer(name, {"decoder_size": "toy-B"}, toy=True)
    c = tok.config
    images = torch.rand(1, 3, c.image_size, c.image_size)
    text = torch.randn(1, c.text_tokens, c.text_dim) if c.text_tokens else None
    tokens = tok.encode(images)
    assert counted(lambda: tok.encode(images)) == FL.titok_encode(c)
    assert counted(lambda: tok.decode(tokens, text=text)) == FL.titok_decode(c)


def test_flops_match_torch_counter_for_generators_and_training_parts():
    tok, gen = toy_pair(generator="MaskGIT-UViT:TiTok-S-128")
    settings = gen.config.sampler.updated(num_steps=3)
    assert counted(lambda: gen.generate(torch.tensor([4]), **settings.__dict__)) == FL.generation(gen.config, settings)
    teacher = factories.teacher_for(factories.build_tokenizer("TiTok-L-32", {"pixel_decoder": False}, toy=True))
    assert counted(lambda: teacher.encode(torch.rand(1, 3, 64, 64))) == FL.vqgan_encode(teacher.config, 64)
    disc = NLayerDiscriminator(32, groups=8)
    assert counted(lambda: disc(torch.rand(1, 3, 64, 64))) == FL.discriminator_forward(64, 32)


def test_flops_match_torch_counter_for_perceptual_networks():
    images = torch.rand(1, 3, 32, 32)
    assert counted(lambda: ConvNeXtLogits(allow_random=True, resolution=64)(images)) == FL.convnext_small(64)
    assert counted(lambda: LPIPS(allow_random=True)(images, images)) == (2 * FL.lpips_features(32) + FL.lpips_heads(32))


def test_flops_grow_with_k():
    costs = [FL.titok_encode(factories.tokenizer_config(f"TiTok-B-{k}")) for k in (16, 64, 256)]
    assert costs[0] < costs[1] < costs[2]
    rows = scaling_flops(sizes=["L"], ks=[16, 32, 256])
    generate = [r for r in rows if r["task"] == "generate"]
    assert generate[0]["flops_x"] == 1.0 < generate[1]["flops_x"] < generate[2]["flops_x"]
    # the released pair: 15 generator forwards (8 steps, linear guidance) + L decoder + pixel decoder
    l32 = factories.tokenizer_config("TiTok-L-32")
    gen = models.VARIANTS["MaskGIT-ViT:TiTok-L-32"].config
    assert generate[1]["gflop_per_item"] * 1e9 == 15 * FL.generator_forward(gen) + FL.titok_decode(l32)


# ---- measurement API and CLI ---------------------------------------------------------------------------------------
def test_measure_generation_api():
    tok, gen = toy_pair()
    row = measure.measure_generation(
        tok,
        gen,
        batch_size=2,
        sampler_settings={"num_steps": 2},
        mode="parity",
        warmup=0,
        repeats=2,
        device="cpu",
        keep_outputs=True,
    )
    assert row["samples_per_s"] > 0 and row["runs"] == 2 and row["steps"] == 2
    assert row["gflop_per_item"] * 1e9 == FL.generation(gen.config, gen.config.sampler.updated(num_steps=2)) + (
        FL.titok_decode(tok.config)
    )
    assert row["ids"].shape == (2, 32) and row["images"].shape == (2, 3, 64, 64)
    rows = measure.measure_tokenizer(tok, batch_size=2, mode="fast", warmup=0, repeats=1)
    assert [r["task"] for r in rows] == ["encode", "decode"] and all(r["throughput"] > 0 for r in rows)


def test_measure_generation_keeps_its_package_path():
    from bench.speed import measure_generation

    assert measure_generation is measure.measure_generation


def small_losses(recipe, convnext_weight=0.0):
    """A reconstruction recipe with CPU-sized loss networks: ConvNeXt-S at 32 px (or none), a 32-channel
    discriminator."""
    perceptual = dataclasses.replace(recipe.perceptual, convnext_weight=convnext_weight, resolution=32)
    return dataclasses.replace(
        recipe, perceptual=perceptual, gan=dataclasses.replace(recipe.gan, disc_base_channels=32, disc_groups=8)
    )


def test_measure_training_stages():
    cfg = factories.tokenizer_config("TiTok-S-32", toy=True)
    gen_cfg = factories.generator_config("MaskGIT-ViT", cfg, toy=True)
    single = factories.tokenizer_config("TiTok-BL-64-VQ", toy=True)
    stage2 = small_losses(training.paper_recipe("stage2"))
    single_recipe = small_losses(training.paper_recipe("single"))
    cases = {
        "train-stage1": ("stage1", cfg, None, FL.train_stage1(cfg)),
        "train-stage2": ("stage2", cfg, stage2, FL.train_stage2(cfg, stage2.perceptual, stage2.gan)),
        "train-generator": ("generator", cfg, None, FL.train_generator(cfg, gen_cfg)),
        "train-generator_pretokenized": ("generator_pretokenized", cfg, None, 3 * FL.generator_forward(gen_cfg)),
        "train-single": (
            "stage2",
            single,
            single_recipe,
            FL.train_single_stage(single, single_recipe.perceptual, single_recipe.gan),
        ),
    }
    for task, (stage, tok_cfg, recipe, flops) in cases.items():
        row = training.measure_training(stage, tok_cfg, gen_cfg, batch_size=1, warmup=0, repeats=1, recipe=recipe)
        assert row["task"] == task and row["throughput"] > 0 and row["note"].startswith(task), task
        assert row["gflop_per_item"] * 1e9 == flops, task


@pytest.mark.parametrize("stage", ["stage1", "generator", "generator_pretokenized"])
def test_timed_step_is_one_step_of_the_training_loop(stage, tmp_path):
    """From the same weights and batch, one timed step leaves the weights (and EMA) exactly where one step of
    bench.train.loop.train leaves them with the stage's objective."""
    cfg = factories.tokenizer_config("TiTok-S-32", toy=True)
    gen_cfg = factories.generator_config("MaskGIT-ViT", cfg, toy=True)
    timed, trained = (training.training_step(stage, cfg, gen_cfg, batch_size=2, seed=3) for _ in range(2))
    assert timed.step == 0
    name = timed.trainer.objective.ema_of
    before = {k: v.clone() for k, v in timed.trainer.objective.modules[name].state_dict().items()}
    torch.manual_seed(timed.trainer.cfg.seed)  # as train() seeds rank 0 (the generator's masking is random)
    logs = timed()
    assert any(k.startswith(("stage1/", "generator/")) for k in logs)
    loop = dataclasses.replace(trained.trainer.cfg, steps=1)
    result = train(trained.trainer.objective, lambda start: itertools.repeat(trained.batch), loop, tmp_path)
    a, b = timed.trainer.objective.modules[name].state_dict(), trained.trainer.objective.modules[name].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], before[k]) for k in a if a[k].is_floating_point())
    ema = result.model.state_dict()
    assert all(torch.equal(timed.trainer.ema.shadow[k].cpu(), ema[k]) for k in timed.trainer.ema.shadow)


def test_timed_stage2_step_updates_the_decoder_and_the_discriminator():
    cfg = factories.tokenizer_config("TiTok-S-32", toy=True)
    recipe = small_losses(training.paper_recipe("stage2"), convnext_weight=0.1)
    step = training.training_step("stage2", cfg, batch_size=1, recipe=recipe)
    assert step.step == recipe.gan.start_step  # the discriminator is active
    modules = step.trainer.objective.modules
    before = {f"{n}.{k}": v.clone() for n, m in modules.items() for k, v in m.state_dict().items()}
    logs = step()
    assert {
        "stage2/l2",
        "stage2/convnext",
        "stage2/gan_g",
        "stage2/gan_d",
        "stage2/lecam",
        "discriminator/grad_norm",
    } <= set(logs)
    after = {f"{n}.{k}": v for n, m in modules.items() for k, v in m.state_dict().items()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("tokenizer.decoder.") for k in changed)
    assert any(k.startswith("tokenizer.pixel_decoder.") for k in changed)
    assert any(k.startswith("discriminator.") for k in changed)
    assert not any(k.startswith(("tokenizer.encoder.", "tokenizer.quantize.")) for k in changed)
    # offline, ConvNeXt-S is a seeded random stand-in, and the row says so
    assert ("stand-in convnext" in step.note) == step.trainer.objective.random_weights["convnext"]


def test_scaling_toy():
    rows = scaling(sizes=["S"], ks=[16, 64], toy=True, batch_size=1, warmup=0, repeats=1, generation=True)
    assert [(r["tokens"], r["task"]) for r in rows] == [
        (16, "encode+decode"),
        (16, "generate"),
        (64, "encode+decode"),
        (64, "generate"),
    ]
    assert rows[2]["gflop_per_item"] > rows[0]["gflop_per_item"]


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "bench.speed", "--help"], capture_output=True, text=True, check=True)
    assert "python -m bench.speed --toy" in out.stdout and "--scaling" in out.stdout


def test_cli_toy_end_to_end(tmp_path, capsys):
    args = [
        "--toy",
        "--sections",
        "peak,generation,tokenizer",
        "--pairs",
        "TiTok-L-32",
        "--batch-size",
        "2",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--sampler-set",
        "num_steps=2",
        "--csv",
        str(tmp_path / "out.csv"),
        "--json",
        str(tmp_path / "out.json"),
    ]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "device: CPU" in out and "matmul peak bf16" in out
    for mode in ("naive", "parity", "auto"):  # the default modes
        assert f"# {mode}:" in out
    assert "tokens 100.0%" in out and "reference" in out
    data = json.loads((tmp_path / "out.json").read_text())
    tasks = {(r["task"], r["mode"]) for r in data["rows"]}
    assert {
        ("generate", "naive"),
        ("generate", "parity"),
        ("generate", "auto"),
        ("encode", "auto"),
        ("decode", "parity"),
    } <= tasks
    auto = [r for r in data["rows"] if r["mode"] == "auto"]
    assert all(r["path"] in ("fast", "parity") and r["note"] for r in auto)  # which path ran, and why
    assert (tmp_path / "out.csv").read_text().startswith("section,")


def test_cli_custom_pair_and_bad_input(capsys):
    args = [
        "--toy",
        "--sections",
        "generation",
        "--tokenizer",
        "TiTok-S-32",
        "--generator",
        "MaskGIT-ViT",
        "--gen-set",
        "num_layers=2",
        "--modes",
        "parity",
        "--batch-size",
        "1",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--sampler-set",
        "num_steps=2",
    ]
    assert cli.main(args) == 0
    assert "TiTok-S-32 (toy) + MaskGIT-ViT" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown modes"):
        cli.main(["--modes", "turbo"])


# ---- GPU -----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_fp32_equal_eager_and_fast_quality():
    tok, gen = toy_pair()
    tok, gen = tok.cuda(), gen.cuda()
    labels = torch.arange(4, device="cuda")
    exact = InferencePipeline(tok, gen, options="parity")
    graphed = InferencePipeline(tok, gen, options=InferenceOptions(cuda_graphs=True))
    ids, images = exact.generate(labels, rng=torch.Generator("cuda").manual_seed(0))
    ids_g, images_g = graphed.generate(labels, rng=torch.Generator("cuda").manual_seed(0))
    assert torch.equal(ids, ids_g) and torch.equal(images, images_g)
    q = compare_with_parity(tok, gen, options="fast", batch_size=8)
    assert q["token_agreement"] >= MIN_TOKEN_AGREEMENT and q["image_psnr_db"] >= MIN_IMAGE_PSNR
    assert InferencePipeline(tok, gen, options="auto").choice.mode == "fast"  # CUDA: fast passes the guard


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_path_quality_on_cuda():
    tok, gen = toy_pair()
    q = compare_with_parity(tok.cuda(), gen.cuda(), options="compiled", batch_size=4)
    assert q["token_agreement"] >= MIN_TOKEN_AGREEMENT and q["image_psnr_db"] >= MIN_IMAGE_PSNR
