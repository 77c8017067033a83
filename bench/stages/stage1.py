"""Stage `stage1`: proxy-code training of a two-stage tokenizer against the MaskGIT-VQGAN teacher's codes
(bench.train.tokenizer.train_stage1).

Identity: the model and its overrides, the teacher's architecture overrides, the quantiser weight, data, optimiser,
loop (steps, batch, precision, EMA, accumulation, seed) and the stand-in permission, plus the teacher (the teacher
stage's identity, or the released teacher's name); not the device, data root and workers, or how often it logs and
checkpoints.
"""

from __future__ import annotations

from bench.stages import base
from bench.train.recipes import Stage1Config as Spec
from bench.train.tokenizer import MODEL_FILE

NAME = "stage1"
RESOURCES = "train"
PRODUCT = MODEL_FILE
RULE = base.IdentityRule(NAME, base.TRAINING_IGNORED, {"teacher": "teacher.source"})


def run(spec: Spec, ctx: base.Context) -> dict:
    from bench.train.tokenizer import train_stage1

    return base.training_result(train_stage1(spec, ctx.out, ctx.log))
