"""The cost of TiTok-{S,B,L}-{K} against the number of tokens K: encode+decode per image and generation with
de-tokenisation per sample, measured (`scaling`) or analytic only (`scaling_flops`), each relative to the smallest
K of its size."""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

import models

from . import flops as FL
from .factories import build_generator, build_tokenizer, generator_config, teacher_for, tokenizer_config
from .measure import Runner, generation_runner, tokenizer_runners
from .timing import time_interleaved

SCALING_SIZES = ("S", "B", "L")
SCALING_TOKENS = (16, 32, 64, 96, 128, 192, 256)


def scaling(
    *,
    sizes=SCALING_SIZES,
    ks=SCALING_TOKENS,
    toy: bool = False,
    batch_size: int = 8,
    mode="auto",
    generator: str = "MaskGIT-ViT",
    warmup: int = 1,
    repeats: int = 3,
    device: torch.device | str = "cpu",
    generation: bool = True,
    log: Callable[[dict], None] | None = None,
) -> list[dict]:
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
            runners = {
                "encode+decode": Runner(
                    lambda parts=parts: parts["encode"]() or parts["decode"]() or {},
                    batch_size,
                    flops,
                    dict(parts["encode"].row, task="encode+decode"),
                )
            }
            if generation:
                gen = build_generator(generator, tok, toy=toy).to(device)
                runners["generate"] = generation_runner(
                    tok,
                    gen,
                    batch_size=batch_size,
                    sampler_settings=settings,
                    mode=mode,
                    teacher=teacher,
                    device=device,
                )
            timings = time_interleaved(runners, warmup=warmup, repeats=repeats, device=device)
            for task, runner in runners.items():
                rows.append(
                    {"section": "scaling", "model": name, "size": size, "tokens": k, **runner.result(timings[task])}
                )
                if log:
                    log(rows[-1])
            del tok, teacher, runners, parts
            gc.collect()
    return _relative_to_smallest_k(rows)


def scaling_flops(
    *, sizes=SCALING_SIZES, ks=SCALING_TOKENS, toy: bool = False, generator: str = "MaskGIT-ViT"
) -> list[dict]:
    """The analytic half of `scaling` from the configs alone (no model is built or run)."""
    settings = models.VARIANTS["MaskGIT-ViT:TiTok-L-32"].config.sampler
    rows = []
    for size in sizes:
        for k in ks:
            c = tokenizer_config(f"TiTok-{size}-{k}", toy=toy)
            g = generator_config(generator, c, toy=toy)
            common = {
                "section": "scaling",
                "model": f"TiTok-{size}-{k}" + (" (toy)" if toy else ""),
                "size": size,
                "tokens": k,
            }
            rows.append(
                {
                    **common,
                    "task": "encode+decode",
                    "unit": "images/s",
                    "gflop_per_item": (FL.titok_encode(c) + FL.titok_decode(c)) / 1e9,
                }
            )
            rows.append(
                {
                    **common,
                    "task": "generate",
                    "unit": "samples/s",
                    "gflop_per_item": (FL.generation(g, settings) + FL.titok_decode(c)) / 1e9,
                }
            )
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
