"""Stage `generator`: MaskGIT training on the tokens of a frozen tokenizer (bench.train.generator.train_generator),
encoded on the fly or read from the pretokenize stage's product (`tokens`).

Identity: the generator model and its overrides, label smoothing, the unmasked-token weight, data, optimiser, loop
and the stand-in permission, plus the tokenizer it reads (the tokenizer stage's identity, or a released name) and
the tokens it reads (the pretokenize stage's identity, a folder's content, or none: on the fly); not the device,
data root and workers, or how often it logs and checkpoints.
"""

from __future__ import annotations

import models
from bench.stages import base
from bench.stages.planning import PlanContext, container, training_keywords
from bench.train.recipes import GeneratorTrainConfig as Spec
from bench.train.recipes import LoopConfig, OptimConfig
from bench.train.stage import MODEL_FILE

NAME = "generator"
RESOURCES = "train"
PRODUCT = MODEL_FILE
RULE = base.IdentityRule(NAME, base.TRAINING_IGNORED, {"tokenizer": "tokenizer", "tokens": "tokens"})
PRESET = {"generator.loop": LoopConfig, "generator.optim": OptimConfig, "generator.overrides": models.GeneratorConfig}


def plan(c: PlanContext):
    """A trained cell with discrete tokens: on its encoder's tokens (the pretokenized ones where planned)."""
    if "generator" not in c.stages or not c.makes_ids:
        return None
    g, tokens = c.p.generator, c.tasks.get("pretokenize")
    return Spec(
        tokenizer=c.encoder.product,
        tokens=tokens.product if tokens else None,
        model=g.model,
        model_overrides=container(g.overrides),
        label_smoothing=g.label_smoothing,
        unmasked_weight=g.unmasked_weight,
        **training_keywords(c, g, data=c.generator_data),
        allow_random_weights=c.allow_random,
    ), {"tokenizer": c.encoder, "tokens": tokens}


def run(spec: Spec, ctx: base.Context) -> dict:
    from bench.train.generator import train_generator

    return base.training_result(train_generator(spec, ctx.out, ctx.log))
