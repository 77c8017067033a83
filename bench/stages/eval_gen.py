"""Stage `eval_gen`: the ADM protocol for a generator on a tokenizer's tokens (bench.eval.sample, then
bench.eval.generation): class-balanced, per-sample-seeded samples to an ADM .npz in the stage's folder, then gfid,
gfid_clean, gfid_is, sfid, precision, recall, gfid_num_samples; a grid of the first samples as samples.png.

Protocol: float32 Inception, as ADM's evaluator (reference_batch.INCEPTION_DTYPE), against the reference_batch
stage's file. Sampling runs the `auto` inference path under the exact guard (bench.speed.guard.EXACT_GUARD): only
exact fp32 paths pass it, so the samples equal the reference sampler's on every device (gFID parity), and the path
that ran is recorded in the samples' metadata (`inference`) and the tag titok.sample_path.

Identity: the number of samples and classes, the sampler overrides, the seed, fid_method, clean-fid on or off, the
Inception dtype, the stand-in permission, the bootstrap resamples (`bootstrap`: the <metric>_lo / _hi intervals of
gfid, gfid_is, precision, recall; how: the tag titok.gfid_interval), and the inputs: the generator, the tokenizer,
the teacher and the reference batch; not the batch sizes (a sample does not depend on its batch), PNG copies, the
name that labels the samples file, the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import models
from bench import tracking as T
from bench.core.io import atomic_file
from bench.core.loading import SetupError
from bench.stages import base, reference_batch
from bench.stages.planning import PlanContext, container, eval_keywords

NAME = "eval_gen"
RESOURCES = "eval"
PRODUCT = None
SAMPLE_GRID = "samples.png"
RULE = base.IdentityRule(
    NAME,
    base.WHERE_AND_HOW + ("batch_size", "sample_batch_size", "png", "model_name"),
    {"generator": "generator", "tokenizer": "tokenizer", "teacher": "teacher", "reference_batch": "reference_batch"},
)


@dataclass(frozen=True)
class EvalGenSpec:
    generator: str
    tokenizer: str
    reference_batch: str  # the reference_batch stage's file, or an ADM .npz
    num_samples: int
    num_classes: int | None = None  # sample classes 0..num_classes-1 (None: the generator's)
    teacher: str | None = None
    sampler: dict = field(default_factory=dict)  # overrides of the generator's sampler settings
    seed: int = 42
    fid_method: str = "sqrtm"
    clean_fid: bool = True  # clean-fid's FID as a second backend (its own scipy sqrtm: slow on CPUs)
    inception_dtype: str = reference_batch.INCEPTION_DTYPE
    allow_random_weights: bool = False
    batch_size: int = 64  # Inception batches, and sampling batches unless sample_batch_size
    sample_batch_size: int | None = None
    png: bool = False  # also write every sample as a PNG
    model_name: str | None = None  # names the samples file (None: the tokenizer's label)
    bootstrap: int = 200  # resamples behind the <metric>_lo / _hi intervals (0: none)
    device: str = "auto"


PRESET = {"sampler": models.SamplerSettings}


def plan(c: PlanContext):
    """Every cell with a generator, against the shared reference batch."""
    if not c.generator or "eval_gen" not in c.stages:
        return None
    ev, ref = c.p.eval, c.shared["reference_batch"]
    return EvalGenSpec(
        generator=c.generator,
        tokenizer=c.tokenizer,
        reference_batch=ref.product,
        num_samples=ev.gfid_samples,
        num_classes=c.cfg.data.num_classes,
        teacher=c.teacher,
        sampler=container(c.p.sampler),
        seed=c.cfg.seed,
        fid_method=ev.fid_method,
        clean_fid=ev.clean_fid,
        bootstrap=ev.bootstrap,
        model_name=c.name,
        **eval_keywords(c),
    ), {"generator": c.generator_task, "tokenizer": c.tokenizer_task, "teacher": c.teacher_task, "reference_batch": ref}


def run(spec: EvalGenSpec, ctx: base.Context) -> dict:
    from bench.core.loading import load_for_eval
    from bench.eval.generation import evaluate_generation
    from bench.eval.sample import sample_to_npz, sampler_settings
    from bench.speed.guard import EXACT_GUARD

    loaded = load_for_eval(
        spec.tokenizer, teacher=spec.teacher, generator=spec.generator, allow_random=spec.allow_random_weights
    )
    tok, gen, random = loaded.tokenizer, loaded.generator, loaded.random
    try:
        sampler_settings(gen.model, **spec.sampler)
    except ValueError as err:
        raise SetupError(f"sampler settings: {err}") from None
    pipeline = sampling_pipeline(tok.model, gen.model, loaded.teacher_model, ctx.info.device, EXACT_GUARD)
    npz = sample_to_npz(
        gen.model,
        tok.model,
        ctx.out,
        model=spec.model_name or tok.label,
        checkpoint=gen.label,
        num_samples=spec.num_samples,
        seed=spec.seed,
        info=ctx.info,
        teacher=loaded.teacher_model,
        num_classes=spec.num_classes,
        batch_size=spec.sample_batch_size or spec.batch_size,
        png=spec.png,
        metadata={"weights_random": dict(random)},
        pipeline=pipeline,
        **spec.sampler,
    )
    inception = base.inception(spec, ctx)
    random["inception"] = inception.random
    metrics = evaluate_generation(
        npz,
        spec.reference_batch,
        inception=inception,
        info=ctx.info,
        batch_size=spec.batch_size,
        fid_method=spec.fid_method,
        clean_fid=spec.clean_fid,
        bootstrap=spec.bootstrap,
    )
    samples = metrics.pop("samples", {})
    grid = ctx.out / SAMPLE_GRID
    if ctx.info.is_main:
        save_sample_grid(npz, grid)
    return {
        "metrics": metrics,
        "samples": samples,
        "npz": str(npz),
        "random_weights": random,
        "tokenizer": tok.label,
        "generator": gen.label,
        "inception_dtype": spec.inception_dtype,
        "tags": {
            **base.feature_tags("gfid", spec, inception, f"reference batch {Path(spec.reference_batch).name}"),
            T.TAG_SAMPLE_PATH: samples.get("inference", pipeline.describe()),
            **interval_tags(spec.bootstrap, metrics.get("gfid_num_samples")),
        },
        "artifacts": [str(grid)],
    }


def sampling_pipeline(tokenizer, generator, teacher, device, guard):
    """The `auto` inference path of the sampler under `guard`, on models moved to `device`."""
    from bench.speed.paths import InferencePipeline

    for module in (tokenizer, generator, teacher):
        if module is not None:
            module.to(device)
    return InferencePipeline(tokenizer, generator, options="auto", teacher=teacher, guard=guard)


def save_sample_grid(npz: str | os.PathLike, path: Path, count: int = 32, columns: int = 8) -> None:
    import numpy as np
    from PIL import Image

    with np.load(npz) as f:
        images = f["arr_0"][:count]
    rows = -(-len(images) // columns)
    h, w = images.shape[1:3]
    canvas = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i, im in enumerate(images):
        canvas[(i // columns) * h : (i // columns + 1) * h, (i % columns) * w : (i % columns + 1) * w] = im
    with atomic_file(path) as f:
        Image.fromarray(canvas).save(f, format="PNG")


def interval_tags(resamples: int, num_samples: int | None) -> dict[str, str]:
    """How the gfid / gfid_is / precision / recall intervals were made (none: no tag)."""
    from bench.eval.generation import BOOTSTRAP_DESCRIPTION

    if not resamples:
        return {}
    return {T.eval_tag("gfid", "interval"): BOOTSTRAP_DESCRIPTION.format(resamples=resamples, n=num_samples)}
