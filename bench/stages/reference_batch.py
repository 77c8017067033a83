"""Stage `reference_batch`: the gFID reference batch every eval_gen compares against, in the
VIRTUAL_imagenet256_labeled.npz layout: an existing ADM batch used as it is (`source`: linked into the folder, its
images' pool features cached beside it for precision/recall), or one made from `num_images` evaluation images.

Protocol: Inception in float32, as ADM's evaluator (INCEPTION_DTYPE; eval_gen uses the same).

Identity: the source batch (its weights-registry name, or a hash of the file) or the images it is made from
(dataset name, image size, classes, seed, split, num_images), the Inception dtype and the stand-in permission; not
the batch size, device, data root and workers, or where the file goes (`path`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from bench.core.dist import barrier
from bench.core.loading import SetupError
from bench.stages import base
from bench.stages.planning import PlanContext, eval_keywords
from bench.train.recipes import DataConfig

NAME = "reference_batch"
RESOURCES = "eval"
PRODUCT = "reference_batch.npz"
INCEPTION_DTYPE = "float32"
RULE = base.IdentityRule(NAME, base.EVAL_IGNORED + ("path",), {"source": "source"})


@dataclass(frozen=True)
class ReferenceBatchSpec:
    data: DataConfig
    num_images: int
    source: str | None = None  # an existing ADM .npz; None: make one from the evaluation split
    split: str = "val"
    inception_dtype: str = INCEPTION_DTYPE
    allow_random_weights: bool = False
    batch_size: int = 64
    device: str = "auto"
    path: str | None = None  # where the batch goes (None: PRODUCT in the stage's folder)


SHARED = True


def plan(c: PlanContext):
    """Once per grid, for every cell's eval_gen; preset.eval.reference_batch: a file, a weights-registry name
    (resolved here: MissingWeightsError says where to put it) or null (made from the evaluation images)."""
    if "eval_gen" not in c.stages:
        return None
    ev = c.p.eval
    source = ev.reference_batch
    if source and not Path(source).is_file():
        from bench import weights

        source = str(weights.require(source))
    return ReferenceBatchSpec(
        data=c.val_data,
        num_images=ev.gfid_reference_images,
        source=source,
        **eval_keywords(c),
    ), {}


def run(spec: ReferenceBatchSpec, ctx: base.Context) -> dict:
    from bench.eval.generation import make_reference_batch, reference_pool_features

    path = Path(spec.path) if spec.path else ctx.out / PRODUCT
    inception = base.inception(spec, ctx)
    if spec.source:
        if not Path(spec.source).is_file():
            raise SetupError(f"reference batch {spec.source} does not exist")
        if ctx.info.is_main and not os.path.lexists(path):
            os.symlink(Path(spec.source).resolve(), path)
        barrier()
        reference_pool_features(path, inception, ctx.info, spec.batch_size)  # cached for every eval_gen
    else:  # the features are cached as the batch is written
        images = base.eval_dataset(spec.data, spec.split, spec.num_images)
        make_reference_batch(
            images,
            spec.num_images,
            inception,
            path,
            batch_size=spec.batch_size,
            info=ctx.info,
            num_workers=spec.data.num_workers,
            metadata={"data": dataclasses.asdict(spec.data), "inception_dtype": spec.inception_dtype},
        )
    return {
        "metrics": {},
        "path": str(path),
        "inception_dtype": spec.inception_dtype,
        "random_weights": {"inception": inception.random},
    }
