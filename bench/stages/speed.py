"""Stage `speed`: sampling throughput with de-tokenization (bench.speed's measure_generation): samples_per_s, the
median of `repeats` timed runs after `warmup` ones, on the stage's device. A tokenizer without a generator (a
single-stage VAE, or a single-stage cell trained without one): its encode and decode throughput instead
(measure_tokenizer: encode_images_per_s, decode_images_per_s).

Identity: everything the measurement depends on: batch size, repeats and warm-up (more repeats are a more precise
number: asking for them re-measures), the sampler overrides, the inference mode, the device setting, the stand-in
permission and the inputs (tokenizer, generator, teacher). Unlike the other stages the device counts here: it is what
is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import models
from bench import tracking as T
from bench.stages import base
from bench.stages.planning import PlanContext, container, eval_keywords

NAME = "speed"
RESOURCES = "eval"
SINGLE_PROCESS = True  # one benchmark on one device: more ranks would only repeat it
PRODUCT = None
RULE = base.IdentityRule(NAME, (), {"tokenizer": "tokenizer", "generator": "generator", "teacher": "teacher"})


@dataclass(frozen=True)
class SpeedSpec:
    tokenizer: str
    generator: str | None  # None: time the tokenizer's encode and decode
    teacher: str | None = None
    batch_size: int = 8
    repeats: int = 3
    warmup: int = 1
    sampler: dict = field(default_factory=dict)
    mode: str = "auto"
    allow_random_weights: bool = False
    device: str = "auto"


PRESET = {"sampler": models.SamplerSettings}


def plan(c: PlanContext):
    """Every cell with a generator, and a trained single-stage cell without one (its encode and decode)."""
    if not (c.generator or "single" in c.stages) or "speed" not in c.stages:
        return None
    sp = c.p.eval.speed
    return SpeedSpec(
        tokenizer=c.tokenizer,
        generator=c.generator,
        teacher=c.teacher,
        repeats=sp.repeats,
        warmup=sp.warmup,
        sampler=container(c.p.sampler),
        mode=sp.mode,
        **eval_keywords(c, batch_size=sp.batch_size),
    ), {"generator": c.generator_task, "tokenizer": c.tokenizer_task, "teacher": c.teacher_task}


def run(spec: SpeedSpec, ctx: base.Context) -> dict:
    from bench.core.loading import load_for_eval
    from bench.speed import measure_generation

    loaded = load_for_eval(
        spec.tokenizer, teacher=spec.teacher, generator=spec.generator, allow_random=spec.allow_random_weights
    )
    if spec.generator is None:
        return _tokenizer_speed(spec, loaded, ctx)
    result = measure_generation(
        loaded.tokenizer.model,
        loaded.generator.model,
        batch_size=spec.batch_size,
        sampler_settings=spec.sampler or None,
        mode=spec.mode,
        teacher=loaded.teacher_model,
        warmup=spec.warmup,
        repeats=spec.repeats,
        device=ctx.info.device,
    )
    # timings do not depend on the weights, but the row is still the speed of stand-ins: say so
    return {
        "metrics": {"samples_per_s": float(result["samples_per_s"])},
        "speed": result,
        "random_weights": loaded.random,
        "tags": {T.TAG_SPEED_PATH: speed_path(spec.mode, result)},
    }


def _tokenizer_speed(spec: SpeedSpec, loaded, ctx: base.Context) -> dict:
    from bench.speed.measure import measure_tokenizer

    rows = measure_tokenizer(
        loaded.tokenizer.model,
        batch_size=spec.batch_size,
        mode=spec.mode,
        teacher=loaded.teacher_model,
        warmup=spec.warmup,
        repeats=spec.repeats,
        device=ctx.info.device,
    )
    by = {row["task"]: row for row in rows}
    return {
        "metrics": {f"{task}_images_per_s": float(row["throughput"]) for task, row in by.items()},
        "speed": by,
        "random_weights": loaded.random,
        "tags": {T.TAG_SPEED_PATH: speed_path(spec.mode, by["decode"])},
    }


def speed_path(mode: str, result: dict) -> str:
    """The speed stage's tag: the mode asked for, the path it ran with its options, and why (the path's note), e.g.
    "auto -> parity (fp32+batch_guidance+inference_mode): <why>"."""
    text = f"{mode} -> {result['path']} ({result['options']})"
    return f"{text}: {result['note']}" if result.get("note") else text
