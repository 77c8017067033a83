"""Stage `generator`: MaskGIT training on the tokens of a frozen tokenizer (bench.train.generator.train_generator).

Identity: the generator model and its overrides, label smoothing, the unmasked-token weight, data, optimiser, loop
and the stand-in permission, plus the tokenizer it reads (the tokenizer stage's identity, or a released name); not
the device, data root and workers, or how often it logs and checkpoints.
"""

from __future__ import annotations

from bench.stages import base
from bench.train.recipes import GeneratorTrainConfig as Spec
from bench.train.tokenizer import MODEL_FILE

NAME = "generator"
RESOURCES = "train"
PRODUCT = MODEL_FILE
RULE = base.IdentityRule(NAME, base.TRAINING_IGNORED, {"tokenizer": "tokenizer"})



def run(spec: Spec, ctx: base.Context) -> dict:
    from bench.train.generator import train_generator

    return base.training_result(train_generator(spec, ctx.out, ctx.log))
