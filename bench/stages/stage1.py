"""Stage `stage1`: proxy-code training of a two-stage tokenizer against the MaskGIT-VQGAN teacher's codes
(bench.train.tokenizer.train_stage1).

Identity: the model and its overrides, the teacher's architecture overrides, the quantiser weight, data, optimiser,
loop (steps, batch, precision, EMA, accumulation, seed) and the stand-in permission, plus the teacher (the teacher
stage's identity, or the released teacher's name); not the device, data root and workers, or how often it logs and
checkpoints.
"""

from __future__ import annotations

import models
from bench.stages import base
from bench.stages.planning import PlanContext, container, training_keywords
from bench.train.recipes import LoopConfig, OptimConfig, TeacherConfig
from bench.train.recipes import Stage1Config as Spec
from bench.train.stage import MODEL_FILE

NAME = "stage1"
RESOURCES = "train"
PRODUCT = MODEL_FILE
RULE = base.IdentityRule(NAME, base.TRAINING_IGNORED, {"teacher": "teacher.source"})
PRESET = {"stage1.loop": LoopConfig, "stage1.optim": OptimConfig, "tokenizer": models.TiTokConfig}


def plan(c: PlanContext):
    """Every grid cell TiTok-{size}-{K}: preset.tokenizer with the size's encoder and decoder."""
    if c.size is None:
        return None
    p = c.p
    overrides = dict(container(p.tokenizer), encoder_size=p.sizes[c.size], decoder_size=p.sizes[c.size])
    return Spec(
        model=c.name,
        model_overrides=overrides,
        teacher=TeacherConfig(source=c.teacher_source, overrides=container(p.teacher.overrides)),
        **training_keywords(c, p.stage1),
        decoder_warmup_fraction=p.stage1.decoder_warmup_fraction,
        continuous_fraction=p.stage1.continuous_fraction,
        allow_random_weights=c.allow_random,
    ), {"teacher": c.shared.get("teacher")}


def run(spec: Spec, ctx: base.Context) -> dict:
    from bench.train.tokenizer import train_stage1

    return base.training_result(train_stage1(spec, ctx.out, ctx.log))
