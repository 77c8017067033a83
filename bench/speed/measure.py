"""Inference throughput with its analytic FLOP count: class-conditional generation with de-tokenisation
(samples/s) and tokenizer encode / decode (images/s), on any inference path of bench.speed.paths.

    from bench.speed.measure import measure_generation, measure_tokenizer
    row = measure_generation(tok, gen, batch_size=8, sampler_settings={"num_steps": 8}, mode="fast")
    row["samples_per_s"], row["gflop_per_item"], row["median_s"]

A `Runner` is one unit of timed work (a batch) with the row it reports; the CLI times the runners of several modes
interleaved (bench.speed.timing.time_interleaved) and compares their outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import models
from models.sampling import SamplerSettings

from . import flops as FL
from .paths import InferencePipeline
from .timing import Timing, time_interleaved, time_runs


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
        row = dict(
            self.row,
            throughput=self.items / timing.median,
            **timing.row(),
            gflop_per_item=self.flops_per_item / 1e9,
            achieved_gflops=self.flops_per_item * self.items / timing.median / 1e9,
        )
        return {**row, **self.outputs} if keep_outputs else row


def _mode_name(mode) -> str:
    return mode if isinstance(mode, str) else "custom"


def path_fields(pipe: InferencePipeline) -> dict:
    """What a row records of the path that ran: `path` (the mode `auto` took, or the mode itself), its options and
    precision, and a `note` when the path is not what its name says on this device (bf16 dropped, or auto's
    choice and why)."""
    out = {"path": pipe.choice.mode, "options": pipe.options.describe(), "precision": pipe.options.precision}
    if pipe.choice.reason:
        out["note"] = pipe.choice.reason
    return out


def generation_runner(
    tokenizer: models.TiTok,
    generator: models.MaskGITGenerator,
    *,
    batch_size: int,
    sampler_settings: SamplerSettings | dict | None = None,
    mode="fast",
    teacher: models.MaskGITVQGAN | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> Runner:
    device = torch.device(device) if device is not None else next(tokenizer.parameters()).device
    for m in (tokenizer, generator, teacher):
        if m is not None:
            m.to(device)
    settings = (
        sampler_settings
        if isinstance(sampler_settings, SamplerSettings)
        else (generator.config.sampler.updated(**(sampler_settings or {})))
    )
    pipe = InferencePipeline(tokenizer, generator, options=mode, teacher=teacher, probe_settings=settings)
    labels = torch.arange(batch_size, device=device) % generator.config.num_classes

    def run() -> dict:
        ids, images = pipe.generate(labels, settings, torch.Generator(device).manual_seed(seed))
        return {"ids": ids, "images": images}

    row = {
        "task": "generate",
        "mode": _mode_name(mode),
        **path_fields(pipe),
        "batch": batch_size,
        "unit": "samples/s",
        "steps": settings.num_steps,
        "forwards_per_sample": FL.generator_forwards(settings),
        "guidance": settings.guidance_scale,
        "guidance_decay": settings.guidance_decay,
    }
    flops = FL.generation(generator.config, settings) + decode_flops(tokenizer, teacher)
    return Runner(run, batch_size, flops, row)


def measure_generation(
    tokenizer: models.TiTok,
    generator: models.MaskGITGenerator,
    *,
    batch_size: int,
    sampler_settings: SamplerSettings | dict | None = None,
    mode="fast",
    teacher: models.MaskGITVQGAN | None = None,
    warmup: int = 1,
    repeats: int = 3,
    device: torch.device | str | None = None,
    seed: int = 0,
    keep_outputs: bool = False,
) -> dict:
    """Samples/s of class-conditional generation with de-tokenisation (labels 0..B-1, the same seed every run).

    `sampler_settings`: a SamplerSettings, or a dict of overrides of the generator's own (its paper settings);
    `mode`: a mode name of bench.speed.options ("naive", "parity", "fast", "compiled", "auto") or an InferenceOptions;
    `teacher`: decodes the proxy codes of a stage-1-form two-stage tokenizer (decode_proxy_codes + teacher.decode).
    Returns samples_per_s, the seconds per batch (median_s, iqr_s, min_s, max_s), gflop_per_item (per sample),
    achieved_gflops, the settings and the path that ran (path, options, precision, and a note saying why); with
    keep_outputs also the last run's `ids` and `images`.
    """
    runner = generation_runner(
        tokenizer,
        generator,
        batch_size=batch_size,
        sampler_settings=sampler_settings,
        mode=mode,
        teacher=teacher,
        device=device,
        seed=seed,
    )
    device = next(tokenizer.parameters()).device
    row = runner.result(time_runs(runner, warmup=warmup, repeats=repeats, device=device), keep_outputs)
    row["samples_per_s"] = row["throughput"]
    return row


def tokenizer_runners(
    tokenizer: models.TiTok,
    *,
    batch_size: int,
    mode="fast",
    teacher: models.MaskGITVQGAN | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> dict[str, Runner]:
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
    row = {"mode": _mode_name(mode), **path_fields(pipe), "batch": batch_size, "unit": "images/s"}
    return {
        "encode": Runner(
            lambda: {"output": pipe.encode(images)}, batch_size, FL.titok_encode(c), dict(row, task="encode")
        ),
        "decode": Runner(
            lambda: {"output": pipe.decode(tokens, text)},
            batch_size,
            decode_flops(tokenizer, teacher),
            dict(row, task="decode"),
        ),
    }


def measure_tokenizer(
    tokenizer: models.TiTok,
    *,
    batch_size: int,
    mode="fast",
    teacher: models.MaskGITVQGAN | None = None,
    warmup: int = 1,
    repeats: int = 3,
    device: torch.device | str | None = None,
    seed: int = 0,
    keep_outputs: bool = False,
) -> list[dict]:
    """Images/s of encode and of decode: two rows (see tokenizer_runners)."""
    runners = tokenizer_runners(tokenizer, batch_size=batch_size, mode=mode, teacher=teacher, device=device, seed=seed)
    device = next(tokenizer.parameters()).device
    timings = time_interleaved(runners, warmup=warmup, repeats=repeats, device=device)
    return [runners[task].result(timings[task], keep_outputs) for task in runners]
