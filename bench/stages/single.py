"""Stage `single`: single-stage VQ or VAE tokenizer training (L2, LPIPS, ConvNeXt, GAN, quantiser loss or KL;
bench.train.tokenizer.train_single_stage). No grid lists it yet; it is here so that every training function is a
stage.

Identity: the model and its overrides, loss weights, perceptual and GAN settings, data, optimiser, loop and the
stand-in permission; not the device, data root and workers, or how often it logs and checkpoints. It reads no other
stage.
"""

from __future__ import annotations

from bench.stages import base
from bench.train.recipes import SingleStageConfig as Spec
from bench.train.tokenizer import MODEL_FILE

NAME = "single"
RESOURCES = "train"
PRODUCT = MODEL_FILE
RULE = base.IdentityRule(NAME, base.TRAINING_IGNORED)


def run(spec: Spec, ctx: base.Context) -> dict:
    from bench.train.tokenizer import train_single_stage

    return base.training_result(train_single_stage(spec, ctx.out, ctx.log))
