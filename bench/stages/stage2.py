"""Stage `stage2`: decoder fine-tuning of a stage-1 tokenizer (frozen encoder and quantiser; L2, ConvNeXt
perceptual and GAN losses), adding the pixel decoder (bench.train.tokenizer.train_stage2).

Identity: perceptual and GAN settings, data, optimiser, loop and the stand-in permission, plus its inputs: the
stage-1 tokenizer (that stage's identity) and the teacher (the teacher stage's identity or the released name);
not the device, data root and workers, or how often it logs and checkpoints.
"""

from __future__ import annotations

from bench.stages import base
from bench.train.recipes import Stage2Config as Spec
from bench.train.tokenizer import MODEL_FILE

NAME = "stage2"
RESOURCES = "train"
PRODUCT = MODEL_FILE
RULE = base.IdentityRule(NAME, base.TRAINING_IGNORED, {"stage1": "init_from", "teacher": "teacher.source"})


def run(spec: Spec, ctx: base.Context) -> dict:
    from bench.train.tokenizer import train_stage2

    return base.training_result(train_stage2(spec, ctx.out, ctx.log))
