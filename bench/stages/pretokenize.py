"""Stage `pretokenize`: the tokens of every training image's centre crop and its horizontal flip (or ten crops)
under the cell's frozen tokenizer, written once as memory-mapped shards with a manifest, for the generator stage to
train on instead of encoding every batch (bench.train.pretokenize.pretokenize; the format: bench/data/tokens.py).
Resumable (finished shards are kept) and split across ranks by shard.

Identity: the data, the crop setting and the encoder's precision, plus the tokenizer it reads (the tokenizer stage's
identity, or a released name / a file's content); not the device, data root and workers, the encode batch or the
shard size (they change where the rows are written, not their tokens).
"""

from __future__ import annotations

from bench.data.tokens import MANIFEST
from bench.stages import base
from bench.train.recipes import PretokenizeConfig as Spec

NAME = "pretokenize"
RESOURCES = "train"
PRODUCT = MANIFEST
RULE = base.IdentityRule(NAME, base.WHERE_AND_HOW + ("batch_size", "shard_size"), {"tokenizer": "tokenizer"})


def run(spec: Spec, ctx: base.Context) -> dict:
    from bench.train.pretokenize import pretokenize

    m = pretokenize(spec, ctx.out, ctx.info)
    return {
        "metrics": {"pretokenize_images": m["count"], "pretokenize_skipped": m["skipped"]},
        "tags": {"titok.pretokenize_crops": m["crops"], "titok.pretokenize_precision": m["precision"]},
        "random_weights": {},
    }
