"""Stage `pretokenize`: the tokens of every training image's centre crop and its horizontal flip (or ten crops)
under the cell's frozen tokenizer, written once as memory-mapped shards with a manifest, for the generator stage to
train on instead of encoding every batch (bench.train.pretokenize.pretokenize; the format: bench/data/tokens.py).
Resumable (finished shards are kept) and split across ranks by shard.

Identity: the data, the crop setting and the encoder's precision, plus the tokenizer it reads (the tokenizer stage's
identity, or a released name / a file's content); not the device, data root and workers, the encode batch or the
shard size (they change where the rows are written, not their tokens).
"""

from __future__ import annotations

import dataclasses

from omegaconf import OmegaConf

from bench.data.tokens import MANIFEST
from bench.stages import base
from bench.stages.planning import PlanContext, PlanError, container, unknown_key
from bench.train.recipes import PretokenizeConfig as Spec

NAME = "pretokenize"
RESOURCES = "train"
PRODUCT = MANIFEST
RULE = base.IdentityRule(NAME, base.WHERE_AND_HOW + ("batch_size", "shard_size"), {"tokenizer": "tokenizer"})


def plan(c: PlanContext):
    """The tokens of a trained cell's encoder, for its generator; preset.pretokenize: crops, precision, batch_size,
    shard_size (the spec's defaults where absent)."""
    if "pretokenize" not in c.stages or c.encoder is None:
        return None
    if "generator" not in c.stages:
        raise PlanError("grid.stages has pretokenize without generator: its tokens are the generator's input")
    if not c.makes_ids:
        return None
    settings = container(c.p.pretokenize) if OmegaConf.select(c.p, "pretokenize") is not None else {}
    known = [f.name for f in dataclasses.fields(Spec) if f.name not in ("tokenizer", "data", "device")]
    for key in settings:
        if key not in known:
            raise PlanError(unknown_key("preset.pretokenize", key, known))
    spec = Spec(tokenizer=c.encoder.product, data=c.generator_data, device=c.device, **settings)
    return spec, {"tokenizer": c.encoder}


def run(spec: Spec, ctx: base.Context) -> dict:
    from bench.train.pretokenize import pretokenize

    m = pretokenize(spec, ctx.out, ctx.info)
    return {
        "metrics": {"pretokenize_images": m["count"], "pretokenize_skipped": m["skipped"]},
        "tags": {"titok.pretokenize_crops": m["crops"], "titok.pretokenize_precision": m["precision"]},
        "random_weights": {},
    }
