"""The throughput benchmark: generation (de-tokenisation included), tokenizer encode/decode, training steps, an
analytic FLOP count beside every measurement, and the cost of each against K.

    python -m bench.speed                                  # the default set (below) on the default device
    python -m bench.speed --toy                            # the same at toy sizes: a CPU smoke run
    python -m bench.speed --sections generation --pairs TiTok-L-32 --batch-size 8 --modes naive,parity,fast
    python -m bench.speed --tokenizer TiTok-S-32 --generator MaskGIT-ViT --gen-set num_layers=12 \\
        --sampler-set num_steps=16                         # any grid cell, with overrides
    python -m bench.speed --tokenizer TiTok-B-96 --toy --tok-set decoder_size=toy-L --modes parity,fast
    python -m bench.speed --scaling --toy --csv scaling.csv    # encode+decode and generation cost vs K, S/B/L
    python -m bench.speed --scaling --flops-only           # the analytic cost vs K at full sizes, no runs
    python -m bench.speed --sections training --train-pairs TiTok-S-128 --train-batch-size 2 --json out.json

Default set: the released tokenizer + generator pairs with their paper sampler settings (TiTok-L-32 +
MaskGIT-ViT:TiTok-L-32, 8 steps; TiTok-B-64 + MaskGIT-ViT:TiTok-B-64, 8 steps; TiTok-S-128 +
MaskGIT-UViT:TiTok-S-128, 64 steps) in the modes naive, parity and fast (bench/fast.py says what each one is);
encode and decode of the three tokenizers; a training step of stage 1, stage 2 and the generator; the measured
matmul peak of the device in fp32 and bf16 as the reference line. Weights are random (models.build): the timings
are those of the released weights, the images are not.

Every measurement runs `--warmup` untimed and `--repeats` timed times and reports the median, the inter-quartile
range and min/max. The FLOP count (bench/flops.py) is per item (sample or image). The quality guard compares each
fast mode's tokens and images with the parity mode's (same seed): token agreement and image PSNR.

Python API: `measure_generation`, `measure_tokenizer`, `measure_training`, `scaling` (lists of row dicts), and
`compare_with_parity` (bench/fast.py) for the quality guard.
"""

from __future__ import annotations

import argparse
import ast
import csv
import dataclasses
import functools
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import models
from bench import flops as FL
from bench.fast import MODES, InferencePipeline, image_psnr, resolve_options
from bench.train.loop import OptimConfig, param_groups
from bench.train.losses import LeCam, NLayerDiscriminator, frozen_call, hinge_d_loss, hinge_g_loss, masked_token_loss
from bench.train.recipes import GANConfig, GeneratorTrainConfig, SingleStageConfig, Stage1Config, Stage2Config
from models.maskgit_vqgan import VQGANConfig
from models.sampling import SamplerSettings, random_masking

RELEASED_PAIRS = ("TiTok-L-32", "TiTok-B-64", "TiTok-S-128")
SCALING_SIZES = ("S", "B", "L")
SCALING_TOKENS = (16, 32, 64, 96, 128, 192, 256)
TRAIN_STAGES = ("stage1", "stage2", "generator")
# toy sizes for CPU smoke runs: 64 px, patch 8, an f8 MaskGIT-VQGAN with 32 base channels, a 4-layer generator
TOY_VQGAN = VQGANConfig(hidden_channels=32, channel_mult=(1, 1, 2, 2), z_channels=32, codebook_size=256)
TOY_GENERATOR = dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512)
MODE_NOTES = {
    "naive": "the reference procedure written plainly: separate cond/uncond forwards per step, torch.no_grad, "
             "fp32, NCHW, eager (same model code: SDPA, fused QKV)",
    "parity": "exact fp32: batched cond/uncond forward, inference_mode; tokens equal the reference sampler's",
    "fast": "parity + bf16 (autocast and bf16 weight copies) + channels-last pixel decoder (+ CUDA graphs and "
            "TF32 on CUDA)",
    "compiled": "fast + torch.compile with freezing (compilation happens in the warm-up, outside the timings)",
}


# ---- timing --------------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def iqr(self) -> float:
        if len(self.seconds) < 2:
            return 0.0
        q = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return q[2] - q[0]

    def row(self) -> dict:
        return {"median_s": self.median, "iqr_s": self.iqr, "min_s": min(self.seconds), "max_s": max(self.seconds),
                "runs": len(self.seconds)}


def time_interleaved(fns: dict[str, Callable[[], object]], *, warmup: int, repeats: int, device: torch.device,
                     log: Callable[[str], None] | None = None) -> dict[str, Timing]:
    """`warmup` untimed rounds, then `repeats` timed rounds (device-synchronised), each round calling every
    function once in turn, so a change in machine load affects all of them alike."""
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + max(1, repeats)):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                seconds[name].append(elapsed)
            if log:
                log(f"{name} {'warm-up' if round_ < warmup else 'run'} {round_ + 1}: {elapsed:.3g} s")
    return {name: Timing(s) for name, s in seconds.items()}


def time_runs(fn: Callable[[], object], *, warmup: int, repeats: int, device: torch.device) -> Timing:
    return time_interleaved({"fn": fn}, warmup=warmup, repeats=repeats, device=device)["fn"]


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int | None = None, budget_s: float = 2.0) -> float:
    """FLOP/s of the fastest square matmul, the device's practical ceiling (the best run, as a ceiling should not
    drop when other work shares the machine). Bounded by time, not by a count of products: the size doubles from
    256 up to `size` (2048 on the CPU, 8192 on CUDA) while the next size still fits the budget, and the last size
    is repeated (up to 10 runs) while time is left. Where a dtype lacks hardware support (bf16 on an AVX2-only
    CPU runs at ~1 GFLOP/s, 100x below fp32) the probe stops at a small size instead of running for minutes."""
    largest = size or (8192 if device.type == "cuda" else 2048)
    deadline = time.perf_counter() + budget_s
    best, n = 0.0, min(256, largest)
    with torch.inference_mode():
        while True:
            a = torch.randn(n, n, device=device, dtype=dtype)
            product = functools.partial(torch.matmul, a, torch.randn(n, n, device=device, dtype=dtype))
            seconds = time_runs(product, warmup=1, repeats=3, device=device).seconds
            best = max(best, 2 * n ** 3 / min(seconds))
            # the next size costs ~8x this one, for a warm-up and three runs
            if n < largest and time.perf_counter() + 32 * max(seconds) < deadline:
                n = min(2 * n, largest)
                continue
            for _ in range(7):
                if time.perf_counter() + max(seconds) > deadline:
                    break
                best = max(best, 2 * n ** 3 / time_runs(product, warmup=0, repeats=1, device=device).median)
            return best


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"CPU, {os.cpu_count()} cores" + (f" ({model})" if model else "")


def environment(device: torch.device) -> dict:
    return {"device": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "weights": "random (models.build)"}


# ---- model construction --------------------------------------------------------------------------------------------
def toy_tokenizer_overrides(config: models.TiTokConfig) -> dict:
    """Shrink a tokenizer to CPU toy sizes, keeping its family, K and size letters."""
    out = {"encoder_size": _toy(config.encoder_size), "decoder_size": _toy(config.decoder_size), "image_size": 64,
           "patch_size": 8, "decoder_patch_size": 8}
    if config.two_stage:
        out["vqgan"] = TOY_VQGAN
    if config.text_tokens:
        out["text_dim"] = 32
    return out


def _toy(size: str) -> str:
    return size if size.startswith(("toy-", "tiny")) else f"toy-{size}"


def tokenizer_config(name: str, overrides: dict | None = None, toy: bool = False) -> models.TiTokConfig:
    """The config of a registry name with overrides (after the toy shrink when `toy`)."""
    base = models.resolve(name).config
    if not isinstance(base, models.TiTokConfig):
        raise ValueError(f"{name} is not a tokenizer")
    return models.variants.with_overrides(base, {**(toy_tokenizer_overrides(base) if toy else {}), **(overrides or {})})


def build_tokenizer(name: str, overrides: dict | None = None, toy: bool = False) -> models.TiTok:
    return models.build_from_config(tokenizer_config(name, overrides, toy)).eval()


def generator_config(name: str, tokenizer: models.TiTokConfig, overrides: dict | None = None,
                     toy: bool = False) -> models.GeneratorConfig:
    """A generator over the tokenizer's tokens (num_tokens and codebook_size follow it unless overridden)."""
    if tokenizer.quantizer != "vq":
        raise ValueError("MaskGIT generators need a VQ tokenizer; this one is a VAE")
    base = models.resolve(name).config
    if not isinstance(base, models.GeneratorConfig):
        raise ValueError(f"{name} is not a generator")
    return models.variants.with_overrides(base, {
        **(TOY_GENERATOR if toy else {}), "num_tokens": tokenizer.num_latent_tokens,
        "codebook_size": tokenizer.codebook_size, **(overrides or {})})


def build_generator(name: str, tokenizer: models.TiTok, overrides: dict | None = None,
                    toy: bool = False) -> models.MaskGITGenerator:
    return models.build_from_config(generator_config(name, tokenizer.config, overrides, toy)).eval()


def teacher_for(tokenizer: models.TiTok) -> models.MaskGITVQGAN | None:
    """A random MaskGIT-VQGAN to decode a stage-1-form tokenizer's proxy codes (None when it outputs pixels)."""
    if tokenizer.outputs_pixels:
        return None
    return models.build_from_config(tokenizer.config.vqgan).eval()


def parse_overrides(items: list[str] | None) -> dict:
    """["key=value", ...] -> dict; values are Python literals where they parse (else strings); a dict given for
    `vqgan` becomes a VQGANConfig."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if key == "vqgan" and isinstance(value, dict):
            value = VQGANConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        out[key.strip()] = value
    return out


# ---- FLOP counts of the measured work ------------------------------------------------------------------------------
def decode_flops(tokenizer: models.TiTok, teacher: models.MaskGITVQGAN | None = None) -> int:
    c = tokenizer.config
    if teacher is not None and not tokenizer.outputs_pixels:
        return FL.titok_decode(c, pixel_decoder=False) + FL.vqgan_decoder(teacher.config, c.token_grid)
    return FL.titok_decode(c)


@dataclass
class Runner:
    """One unit of timed work (a batch) and what its row reports; `outputs` holds the last run's results."""

    fn: Callable[[], dict]
    items: int
    flops_per_item: int
    row: dict

    def __post_init__(self):
        self.outputs: dict = {}

    def __call__(self) -> None:
        self.outputs = self.fn()

    def result(self, timing: Timing, keep_outputs: bool = False) -> dict:
        row = dict(self.row, throughput=self.items / timing.median, **timing.row(),
                   gflop_per_item=self.flops_per_item / 1e9,
                   achieved_gflops=self.flops_per_item * self.items / timing.median / 1e9)
        return {**row, **self.outputs} if keep_outputs else row


def _mode_name(mode) -> str:
    return mode if isinstance(mode, str) else "custom"


def generation_runner(tokenizer: models.TiTok, generator: models.MaskGITGenerator, *, batch_size: int,
                      sampler_settings: SamplerSettings | dict | None = None, mode="fast",
                      teacher: models.MaskGITVQGAN | None = None, device: torch.device | str | None = None,
                      seed: int = 0) -> Runner:
    device = torch.device(device) if device is not None else next(tokenizer.parameters()).device
    for m in (tokenizer, generator, teacher):
        if m is not None:
            m.to(device)
    settings = sampler_settings if isinstance(sampler_settings, SamplerSettings) else (
        generator.config.sampler.updated(**(sampler_settings or {})))
    pipe = InferencePipeline(tokenizer, generator, options=mode, teacher=teacher)
    labels = torch.arange(batch_size, device=device) % generator.config.num_classes

    def run() -> dict:
        ids, images = pipe.generate(labels, settings, torch.Generator(device).manual_seed(seed))
        return {"ids": ids, "images": images}

    row = {"task": "generate", "mode": _mode_name(mode), "options": pipe.options.describe(),
           "precision": pipe.options.precision, "batch": batch_size, "unit": "samples/s",
           "steps": settings.num_steps, "forwards_per_sample": FL.generator_forwards(settings),
           "guidance": settings.guidance_scale, "guidance_decay": settings.guidance_decay}
    flops = FL.generation(generator.config, settings) + decode_flops(tokenizer, teacher)
    return Runner(run, batch_size, flops, row)


def measure_generation(tokenizer: models.TiTok, generator: models.MaskGITGenerator, *, batch_size: int,
                       sampler_settings: SamplerSettings | dict | None = None, mode="fast",
                       teacher: models.MaskGITVQGAN | None = None, warmup: int = 1, repeats: int = 3,
                       device: torch.device | str | None = None, seed: int = 0, keep_outputs: bool = False) -> dict:
    """Samples/s of class-conditional generation with de-tokenisation (labels 0..B-1, the same seed every run).

    `sampler_settings`: a SamplerSettings, or a dict of overrides of the generator's own (its paper settings);
    `mode`: a mode name of bench.fast ("naive", "parity", "fast", "compiled") or an InferenceOptions;
    `teacher`: decodes the proxy codes of a stage-1-form two-stage tokenizer (decode_proxy_codes + teacher.decode).
    Returns samples_per_s, the seconds per batch (median_s, iqr_s, min_s, max_s), gflop_per_item (per sample),
    achieved_gflops and the settings; with keep_outputs also the last run's `ids` and `images`.
    """
    runner = generation_runner(tokenizer, generator, batch_size=batch_size, sampler_settings=sampler_settings,
                               mode=mode, teacher=teacher, device=device, seed=seed)
    device = next(tokenizer.parameters()).device
    row = runner.result(time_runs(runner, warmup=warmup, repeats=repeats, device=device), keep_outputs)
    row["samples_per_s"] = row["throughput"]
    return row


def tokenizer_runners(tokenizer: models.TiTok, *, batch_size: int, mode="fast",
                      teacher: models.MaskGITVQGAN | None = None, device: torch.device | str | None = None,
                      seed: int = 0) -> dict[str, Runner]:
    """Encode (random images) and decode (random token ids, the same for every mode and seed)."""
    device = torch.device(device) if device is not None else next(tokenizer.parameters()).device
    tokenizer.to(device)
    if teacher is not None:
        teacher.to(device)
    c = tokenizer.config
    pipe = InferencePipeline(tokenizer, options=mode, teacher=teacher)
    g = torch.Generator(device).manual_seed(seed)
    images = torch.rand(batch_size, 3, c.image_size, c.image_size, generator=g, device=device)
    if tokenizer.is_vq:
        tokens = torch.randint(0, c.codebook_size, (batch_size, c.num_latent_tokens), generator=g, device=device)
    else:
        tokens = torch.randn(batch_size, c.num_latent_tokens, c.token_size, generator=g, device=device)
    text = torch.randn(batch_size, c.text_tokens, c.text_dim, generator=g, device=device) if c.text_tokens else None
    row = {"mode": _mode_name(mode), "options": pipe.options.describe(), "precision": pipe.options.precision,
           "batch": batch_size, "unit": "images/s"}
    return {"encode": Runner(lambda: {"output": pipe.encode(images)}, batch_size, FL.titok_encode(c),
                             dict(row, task="encode")),
            "decode": Runner(lambda: {"output": pipe.decode(tokens, text)}, batch_size,
                             decode_flops(tokenizer, teacher), dict(row, task="decode"))}


def measure_tokenizer(tokenizer: models.TiTok, *, batch_size: int, mode="fast",
                      teacher: models.MaskGITVQGAN | None = None, warmup: int = 1, repeats: int = 3,
                      device: torch.device | str | None = None, seed: int = 0, keep_outputs: bool = False
                      ) -> list[dict]:
    """Images/s of encode and of decode: two rows (see tokenizer_runners)."""
    runners = tokenizer_runners(tokenizer, batch_size=batch_size, mode=mode, teacher=teacher, device=device,
                                seed=seed)
    device = next(tokenizer.parameters()).device
    timings = time_interleaved(runners, warmup=warmup, repeats=repeats, device=device)
    return [runners[task].result(timings[task], keep_outputs) for task in runners]


def _train_autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    if precision != "bf16":
        raise ValueError(f"training precision {precision!r}: the benchmark measures fp32 or bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _adamw(module: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(module, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)


def _update(module: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: float = 1.0) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    optimizer.step()


def training_step(stage: str, tokenizer_config: models.TiTokConfig,
                  generator_config: models.GeneratorConfig | None = None, *, batch_size: int,
                  precision: str = "fp32", device: torch.device | str = "cpu", seed: int = 0
                  ) -> tuple[Callable[[], None], int, str]:
    """(one optimisation step on a fixed batch, its FLOPs per image, what it includes) for a training stage:
    forward + backward + AdamW (the paper's weight-decay groups, clipping 1.0) with the losses' main terms.

    stage1: the teacher's codes (a random MaskGIT-VQGAN, frozen) + CE + quantiser loss, encoder and decoder trained;
    stage2: frozen encoder; L2 + hinge GAN (weight from the recipe) with the discriminator's own update (hinge +
    LeCam); the ConvNeXt/LPIPS perceptual networks are left out. Single-stage tokenizers: the same plus the
    quantiser term, encoder trained too ("single");
    generator: tokens from the frozen tokenizer, arccos masking, class dropout, the MaskGIT loss.
    """
    device = torch.device(device)
    c = tokenizer_config
    g = torch.Generator(device).manual_seed(seed)
    images = torch.rand(batch_size, 3, c.image_size, c.image_size, generator=g, device=device)
    labels = torch.randint(0, 1000, (batch_size,), generator=g, device=device)
    autocast = _train_autocast(device, precision)

    if stage == "stage1":
        if not c.two_stage:
            raise ValueError("stage 1 trains two-stage tokenizers")
        teacher = models.build_from_config(c.vqgan).to(device).eval().requires_grad_(False)
        tok = models.build_from_config(dataclasses.replace(c, pixel_decoder=False)).to(device).train()
        recipe = Stage1Config()
        opt = _adamw(tok, recipe.optim)

        def step():
            with torch.no_grad():
                codes = teacher.encode(images)
            with autocast:
                logits, q = tok(images)
                loss = F.cross_entropy(logits.float().flatten(2), codes) + recipe.quantizer_weight * q.loss
            _update(tok, opt, loss)

        return step, FL.train_stage1(c), "CE to a random teacher's codes + quantiser loss"

    if stage == "stage2":
        recipe = Stage2Config() if c.two_stage else SingleStageConfig()
        gan: GANConfig = recipe.gan
        tok = models.build_from_config(dataclasses.replace(c, pixel_decoder=True) if c.two_stage else c)
        tok.to(device).train()
        if c.two_stage:
            for part in (tok.encoder, tok.quantize):
                part.requires_grad_(False)
            tok.latent_tokens.requires_grad_(False)
        disc = NLayerDiscriminator(gan.disc_base_channels, groups=gan.disc_groups).to(device).train()
        lecam = LeCam().to(device)
        opt_tok, opt_disc = _adamw(tok, recipe.optim), _adamw(disc, gan.optim)

        def step():
            with autocast:
                recon, q = tok(images)
                recon = recon.float()
                loss = F.mse_loss(recon, images) + gan.weight * hinge_g_loss(frozen_call(disc, recon))
                if not c.two_stage:
                    loss = loss + q.loss * (recipe.quantizer_weight if tok.is_vq else recipe.kl_weight)
            _update(tok, opt_tok, loss)
            with autocast:
                real, fake = disc(images), disc(recon.detach())
                d_loss = hinge_d_loss(real, fake) + gan.lecam_weight * lecam(real, fake)
            _update(disc, opt_disc, d_loss)

        flops = FL.train_stage2(c, gan.disc_base_channels)
        if not c.two_stage:
            flops += 2 * FL.titok_encode(c)  # the encoder is trained too
        return step, flops, "L2 + GAN with the discriminator update; perceptual nets (ConvNeXt/LPIPS) left out"

    if stage == "generator":
        if generator_config is None:
            raise ValueError("the generator stage needs a generator config")
        tok = models.build_from_config(c).to(device).eval().requires_grad_(False)
        gen = models.build_from_config(generator_config).to(device).train()
        recipe = GeneratorTrainConfig()
        opt = _adamw(gen, recipe.optim)

        def step():
            with torch.no_grad():
                ids = tok.encode(images)
            masked, mask = random_masking(ids, gen.mask_token_id)
            drop = torch.rand(batch_size, device=device) < gen.config.class_label_dropout
            with autocast:
                logits = gen(masked, labels, drop)
                loss = masked_token_loss(logits, ids, mask, recipe.label_smoothing, recipe.unmasked_weight)
            _update(gen, opt, loss)

        return step, FL.train_generator(c, generator_config), "frozen-tokenizer tokens + MaskGIT loss"
    raise ValueError(f"unknown training stage {stage!r}; expected one of {TRAIN_STAGES}")


def measure_training(stage: str, tokenizer_config: models.TiTokConfig,
                     generator_config: models.GeneratorConfig | None = None, *, batch_size: int,
                     precision: str = "fp32", warmup: int = 1, repeats: int = 3, device: torch.device | str = "cpu",
                     seed: int = 0) -> dict:
    """Images/s of one training step of `stage` (see training_step)."""
    device = torch.device(device)
    step, flops, note = training_step(stage, tokenizer_config, generator_config, batch_size=batch_size,
                                      precision=precision, device=device, seed=seed)
    task = "train-single" if stage == "stage2" and not tokenizer_config.two_stage else f"train-{stage}"
    runner = Runner(lambda: step() or {}, batch_size, flops,
                    {"task": task, "mode": precision, "options": precision, "precision": precision,
                     "batch": batch_size, "unit": "images/s", "note": note})
    return runner.result(time_runs(runner, warmup=warmup, repeats=repeats, device=device))


def scaling(*, sizes=SCALING_SIZES, ks=SCALING_TOKENS, toy: bool = False, batch_size: int = 8, mode="parity",
            generator: str = "MaskGIT-ViT", warmup: int = 1, repeats: int = 3, device: torch.device | str = "cpu",
            generation: bool = True, log: Callable[[dict], None] | None = None) -> list[dict]:
    """Cost against K of TiTok-{size}-{K}: encode+decode per image and generation with de-tokenisation per sample,
    analytic FLOPs and measured time. Every cell's generator is `generator` over its K tokens with the released
    L-32 sampler settings (8 steps, linear guidance)."""
    device = torch.device(device)
    settings = models.VARIANTS["MaskGIT-ViT:TiTok-L-32"].config.sampler
    rows = []
    for size in sizes:
        for k in ks:
            name = f"TiTok-{size}-{k}" + (" (toy)" if toy else "")
            torch.manual_seed(0)
            tok = build_tokenizer(f"TiTok-{size}-{k}", toy=toy).to(device)
            teacher = teacher_for(tok)
            parts = tokenizer_runners(tok, batch_size=batch_size, mode=mode, teacher=teacher, device=device)
            flops = parts["encode"].flops_per_item + parts["decode"].flops_per_item
            runners = {"encode+decode": Runner(lambda parts=parts: parts["encode"]() or parts["decode"]() or {},
                                               batch_size, flops, dict(parts["encode"].row, task="encode+decode"))}
            if generation:
                gen = build_generator(generator, tok, toy=toy).to(device)
                runners["generate"] = generation_runner(tok, gen, batch_size=batch_size, sampler_settings=settings,
                                                        mode=mode, teacher=teacher, device=device)
            timings = time_interleaved(runners, warmup=warmup, repeats=repeats, device=device)
            for task, runner in runners.items():
                rows.append({"section": "scaling", "model": name, "size": size, "tokens": k,
                             **runner.result(timings[task])})
                if log:
                    log(rows[-1])
            del tok, teacher, runners, parts
            gc.collect()
    return _relative_to_smallest_k(rows)


def scaling_flops(*, sizes=SCALING_SIZES, ks=SCALING_TOKENS, toy: bool = False,
                  generator: str = "MaskGIT-ViT") -> list[dict]:
    """The analytic half of `scaling` from the configs alone (no model is built or run)."""
    settings = models.VARIANTS["MaskGIT-ViT:TiTok-L-32"].config.sampler
    rows = []
    for size in sizes:
        for k in ks:
            c = tokenizer_config(f"TiTok-{size}-{k}", toy=toy)
            g = generator_config(generator, c, toy=toy)
            common = {"section": "scaling", "model": f"TiTok-{size}-{k}" + (" (toy)" if toy else ""), "size": size,
                      "tokens": k}
            rows.append({**common, "task": "encode+decode", "unit": "images/s",
                         "gflop_per_item": (FL.titok_encode(c) + FL.titok_decode(c)) / 1e9})
            rows.append({**common, "task": "generate", "unit": "samples/s",
                         "gflop_per_item": (FL.generation(g, settings) + FL.titok_decode(c)) / 1e9})
    return _relative_to_smallest_k(rows)


def _relative_to_smallest_k(rows: list[dict]) -> list[dict]:
    """FLOPs and time of each cell relative to the smallest K of its size and task."""
    first: dict[tuple, dict] = {}
    for r in rows:
        ref = first.setdefault((r["size"], r["task"]), r)
        r["flops_x"] = r["gflop_per_item"] / ref["gflop_per_item"]
        if "median_s" in r:
            r["time_x"] = (r["median_s"] / r["batch"]) / (ref["median_s"] / ref["batch"])
    return rows


# ---- output --------------------------------------------------------------------------------------------------------
COLUMNS = (("section", "section", "{}"), ("task", "task", "{}"), ("model", "model", "{}"), ("mode", "mode", "{}"),
           ("batch", "B", "{}"), ("throughput", "items/s", "{:.3g}"), ("unit", "unit", "{}"),
           ("median_s", "median s", "{:.3g}"), ("iqr_s", "IQR s", "{:.2g}"), ("min_s", "min s", "{:.3g}"),
           ("max_s", "max s", "{:.3g}"), ("gflop_per_item", "GFLOP/item", "{:.4g}"),
           ("achieved_gflops", "GFLOP/s", "{:.4g}"), ("peak_pct", "% peak", "{:.0f}"),
           ("flops_x", "FLOPs x K0", "{:.2f}"), ("time_x", "time x K0", "{:.2f}"), ("speedup", "x parity", "{:.2f}"),
           ("quality", "quality vs parity", "{}"))


def format_table(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(c[0] in r and r[c[0]] is not None for r in rows)]
    cells = [[c[1] for c in cols]]
    for r in rows:
        cells.append([c[2].format(r[c[0]]) if r.get(c[0]) is not None else "" for c in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _plain(rows: list[dict]) -> list[dict]:
    """Rows without tensors (for CSV/JSON)."""
    return [{k: v for k, v in r.items() if not isinstance(v, torch.Tensor)} for r in rows]


def write_csv(rows: list[dict], path: str) -> None:
    rows = _plain(rows)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_json(rows: list[dict], header: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump({"environment": header, "rows": _plain(rows)}, f, indent=1, default=str)


# ---- the CLI -------------------------------------------------------------------------------------------------------
def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--toy", action="store_true", help="toy model sizes (64 px, toy-S/B/L, small VQGAN and generator)")
    p.add_argument("--sections", type=_csv_list, default=["peak", "generation", "tokenizer", "training"],
                   help="comma list of peak, generation, tokenizer, training")
    p.add_argument("--pairs", type=_csv_list, default=list(RELEASED_PAIRS),
                   help="tokenizer names; each with its released generator and sampler settings")
    p.add_argument("--tokenizer", help="a custom pair's tokenizer (any name of the registry, e.g. TiTok-S-32)")
    p.add_argument("--generator", default="MaskGIT-ViT", help="the custom pair's generator (default MaskGIT-ViT)")
    p.add_argument("--tok-set", action="append", metavar="KEY=VALUE", help="tokenizer config override (repeatable)")
    p.add_argument("--gen-set", action="append", metavar="KEY=VALUE", help="generator config override (repeatable)")
    p.add_argument("--sampler-set", action="append", metavar="KEY=VALUE",
                   help="sampler setting override, e.g. num_steps=16 (repeatable)")
    p.add_argument("--modes", type=_csv_list, default=["naive", "parity", "fast"], help=f"of {', '.join(MODES)}")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-pairs", type=_csv_list, default=None,
                   help="tokenizers for the training steps (default: those of --pairs / --tokenizer)")
    p.add_argument("--train-stages", type=_csv_list, default=list(TRAIN_STAGES))
    p.add_argument("--train-batch-size", type=int, default=8)
    p.add_argument("--train-precision", type=_csv_list, default=["fp32"], help="comma list of fp32, bf16")
    p.add_argument("--scaling", action="store_true", help="cost vs K for S/B/L instead of the default set")
    p.add_argument("--sizes", type=_csv_list, default=list(SCALING_SIZES))
    p.add_argument("--ks", type=lambda s: [int(k) for k in _csv_list(s)], default=list(SCALING_TOKENS))
    p.add_argument("--scaling-mode", default="parity", help="inference mode of the scaling runs")
    p.add_argument("--no-scaling-generation", action="store_true", help="scaling: encode+decode only")
    p.add_argument("--flops-only", action="store_true", help="scaling: the analytic FLOP counts only (no runs)")
    p.add_argument("--csv", help="write the rows as CSV")
    p.add_argument("--json", help="write the environment and the rows as JSON")
    return p


def _pairs(args) -> list[tuple[str, str, dict, dict]]:
    """(tokenizer, generator, tokenizer overrides, generator overrides) to measure."""
    tok_set, gen_set = parse_overrides(args.tok_set), parse_overrides(args.gen_set)
    if args.tokenizer:
        return [(args.tokenizer, args.generator, tok_set, gen_set)]
    out = []
    for name in args.pairs:
        variant = models.resolve(name)
        if variant.generator is None:
            raise SystemExit(f"{name} has no released generator; use --tokenizer {name} --generator MaskGIT-ViT")
        out.append((name, variant.generator, tok_set, gen_set))
    return out


def _annotate(rows: list[dict], peaks: dict[str, float]) -> None:
    """Speed-up over the parity row of the same task and model, and the share of the matmul peak."""
    parity = {(r["task"], r.get("model")): r["median_s"] for r in rows if r.get("mode") == "parity"}
    compared = {(r["task"], r.get("model")) for r in rows if r.get("mode") in MODES and r.get("mode") != "parity"}
    for r in rows:
        key = (r["task"], r.get("model"))
        if key in parity and key in compared and r.get("mode") in MODES:
            r["speedup"] = parity[key] / r["median_s"]
        peak = peaks.get(r.get("precision", "fp32"))
        if peak and r.get("achieved_gflops") is not None:
            r["peak_pct"] = 100 * r["achieved_gflops"] * 1e9 / peak


def _quality(row: dict, ref: dict) -> str:
    if "ids" in row:
        agree = float((row["ids"] == ref["ids"]).float().mean())
        return f"tokens {100 * agree:.1f}%, PSNR {image_psnr(row['images'], ref['images']):.1f} dB"
    out, ref_out = row["output"], ref["output"]
    if row["task"] == "decode":
        return f"PSNR {image_psnr(out, ref_out):.1f} dB"
    if out.dtype == torch.long:
        return f"ids {100 * float((out == ref_out).float().mean()):.1f}%"
    return f"rel. err {float((out - ref_out).norm() / ref_out.norm()):.2g}"


def run(args) -> tuple[dict, list[dict]]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    header = environment(device)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print("  " + "  ".join(f"{k}={_short(v)}" for k, v in row.items()
                               if k in ("section", "task", "model", "mode", "batch", "throughput", "median_s")),
              file=sys.stderr, flush=True)

    peaks: dict[str, float] = {}
    if not args.flops_only and ("peak" in args.sections or args.scaling):
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
        if device.type == "cuda":
            dtypes["fp16"] = torch.float16
        for name, dtype in dtypes.items():
            peaks[name] = matmul_peak(dtype, device)
            header[f"matmul_peak_{name}_gflops"] = peaks[name] / 1e9

    if args.scaling and args.flops_only:
        return header, scaling_flops(sizes=args.sizes, ks=args.ks, toy=args.toy)
    if args.scaling:
        rows = scaling(sizes=args.sizes, ks=args.ks, toy=args.toy, batch_size=args.batch_size,
                       mode=args.scaling_mode, warmup=args.warmup, repeats=args.repeats, device=device,
                       generation=not args.no_scaling_generation, log=lambda r: print(f"  {r['model']} {r['task']}",
                                                                                   file=sys.stderr, flush=True))
        _annotate(rows, peaks)
        return header, rows

    sampler_set = parse_overrides(args.sampler_set)
    inference_pairs = _pairs(args) if {"generation", "tokenizer"} & set(args.sections) else []
    for tok_name, gen_name, tok_set, gen_set in inference_pairs:
        torch.manual_seed(args.seed)
        tok = build_tokenizer(tok_name, tok_set, toy=args.toy).to(device)
        teacher = teacher_for(tok)
        model = tok_name + (" (toy)" if args.toy else "")
        runners: dict[tuple[str, str], tuple[str, Runner]] = {}  # (mode, task) -> (section, runner)
        if "generation" in args.sections:
            gen = build_generator(gen_name, tok, gen_set, toy=args.toy).to(device)
            settings = gen.config.sampler.updated(**sampler_set)
            for mode in args.modes:
                runners[(mode, "generate")] = ("generation", generation_runner(
                    tok, gen, batch_size=args.batch_size, sampler_settings=settings, mode=mode, teacher=teacher,
                    device=device, seed=args.seed))
        if "tokenizer" in args.sections:
            for mode in args.modes:
                if mode == "naive":
                    continue  # naive differs from parity only in the generator's guidance passes
                for task, runner in tokenizer_runners(tok, batch_size=args.batch_size, mode=mode, teacher=teacher,
                                                      device=device, seed=args.seed).items():
                    runners[(mode, task)] = ("tokenizer", runner)
        # the modes of a task are timed in turn, round by round, so that load changes hit them alike
        for task in dict.fromkeys(t for _, t in runners):
            group = {mode: runner for (mode, t), (_, runner) in runners.items() if t == task}
            timings = time_interleaved(group, warmup=args.warmup, repeats=args.repeats, device=device,
                                       log=lambda m, prefix=f"  {model} {task}": print(prefix, m, file=sys.stderr,
                                                                                      flush=True))
            results = {mode: group[mode].result(timings[mode], keep_outputs=True) for mode in group}
            for mode, row in results.items():
                if "parity" in results:
                    row["quality"] = "reference" if mode == "parity" else _quality(row, results["parity"])
                section = runners[(mode, task)][0]
                emit({"section": section, "model": model + (f" + {gen_name}" if task == "generate" else ""), **row})
        del tok, teacher, runners
        gc.collect()

    if "training" in args.sections:
        train_pairs = args.train_pairs or [p[0] for p in _pairs(args)]
        tok_set, gen_set = parse_overrides(args.tok_set), parse_overrides(args.gen_set)
        for tok_name in train_pairs:
            tok_cfg = tokenizer_config(tok_name, tok_set, args.toy)
            gen_name = args.generator if args.tokenizer else (models.resolve(tok_name).generator or "MaskGIT-ViT")
            gen_cfg = generator_config(gen_name, tok_cfg, gen_set, args.toy) if tok_cfg.quantizer == "vq" else None
            for stage in args.train_stages:
                if (stage == "stage1" and not tok_cfg.two_stage) or (stage == "generator" and gen_cfg is None):
                    continue
                for precision in args.train_precision:
                    row = measure_training(stage, tok_cfg, gen_cfg, batch_size=args.train_batch_size,
                                           precision=precision, warmup=args.warmup, repeats=args.repeats,
                                           device=device, seed=args.seed)
                    model = tok_name + (" (toy)" if args.toy else "")
                    model += f" + {gen_name}" if stage == "generator" else ""
                    emit({"section": "training", "model": model, **row})
                    gc.collect()
    _annotate(rows, peaks)
    return header, rows


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = set(args.modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}; expected some of {', '.join(MODES)}")
    for mode in args.modes:
        resolve_options(mode, args.device)
    header, rows = run(args)
    print(f"# bench.speed  device: {header['device']}  torch {header['torch']}  threads {header['threads']}  "
          f"weights: {header['weights']} (timings only; images are not meaningful)")
    for key, value in header.items():
        if key.startswith("matmul_peak"):
            print(f"# {key.replace('_', ' ')}: {value:.0f}")
    print(format_table(rows))
    print()
    for mode in dict.fromkeys(r.get("mode") for r in rows):
        if mode in MODE_NOTES:
            print(f"# {mode}: {MODE_NOTES[mode]}")
    notes = dict.fromkeys(r["note"] for r in rows if r.get("note"))
    for row_note in notes:
        print(f"# training: {row_note}")
    print("# FLOPs: analytic (bench/flops.py), matmuls and convolutions only; % peak against the measured matmul "
          "peak of the row's precision")
    if args.csv:
        write_csv(rows, args.csv)
    if args.json:
        write_json(rows, header, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
