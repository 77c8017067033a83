"""Stage `generator`: MaskGIT training on the tokens of a frozen tokenizer (bench.train.generator.train_generator),
encoded on the fly or read from the pretokenize stage's product (`tokens`).

Identity: the generator model and its overrides, label smoothing, the unmasked-token weight, data, optimiser, loop
and the stand-in permission, plus the tokenizer it reads (the tokenizer stage's identity, or a released name) and
the tokens it reads (the pretokenize stage's identity, a folder's content, or none: on the fly); not the device,
data root and workers, or how often it logs and checkpoints.
"""

from __future__ import annotations

from bench.stages import base
from bench.train.recipes import GeneratorTrainConfig as Spec
from bench.train.tokenizer import MODEL_FILE

NAME = "generator"
RESOURCES = "train"
PRODUCT = MODEL_FILE
RULE = base.IdentityRule(NAME, base.TRAINING_IGNORED, {"tokenizer": "tokenizer", "tokens": "tokens"})


def run(spec: Spec, ctx: base.Context) -> dict:
    from bench.train.generator import train_generator

    return base.training_result(train_generator(spec, ctx.out, ctx.log))
