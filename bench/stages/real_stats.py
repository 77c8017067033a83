"""Stage `real_stats`: the real images' Inception pool-feature statistics for rFID (mean, covariance and count of
the `num_images` evaluation images, uint8 as the reconstructions), computed once and read by every eval_recon, and
from the same pass their per-image pool features beside them (`<stem>.pool.npy`, float64: what eval_recon's
bootstrap interval resamples), so that concurrent cells do not each compute them.

Protocol: Inception in float64, as the reference implementation's rFID evaluator runs torch-fidelity's network
(INCEPTION_DTYPE; eval_recon uses the same and checks the file says so).

Identity: the images (dataset name, image size, classes, seed, split, num_images), the Inception dtype and the
stand-in permission; not the batch size, device, data root and workers, or where the file goes (`path`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench.core.dist import barrier, main_rank_says
from bench.core.loading import SetupError
from bench.stages import base
from bench.stages.planning import PlanContext, eval_keywords
from bench.train.recipes import DataConfig

NAME = "real_stats"
RESOURCES = "eval"
PRODUCT = "real_stats.npz"
INCEPTION_DTYPE = "float64"
RULE = base.IdentityRule(NAME, base.EVAL_IGNORED + ("path",))


@dataclass(frozen=True)
class RealStatsSpec:
    data: DataConfig
    num_images: int
    split: str = "val"
    inception_dtype: str = INCEPTION_DTYPE
    allow_random_weights: bool = False
    batch_size: int = 64
    device: str = "auto"
    path: str | None = None  # where the statistics go (None: PRODUCT in the stage's folder); reused when they match


SHARED = True


def plan(c: PlanContext):
    """Once per grid, for every cell's eval_recon."""
    if "eval_recon" not in c.stages:
        return None
    ev = c.p.eval
    return RealStatsSpec(
        data=c.val_data,
        num_images=ev.rfid_images,
        inception_dtype=ev.rfid_inception_dtype,
        **eval_keywords(c),
    ), {}


def run(spec: RealStatsSpec, ctx: base.Context) -> dict:
    from bench.eval.reconstruction import (
        load_feature_stats,
        pool_features_path,
        real_features,
        save_feature_stats,
        save_pool_features,
    )
    from bench.eval.run import on_main

    path = Path(spec.path) if spec.path else ctx.out / PRODUCT
    pool_path = pool_features_path(path)
    inception = base.inception(spec, ctx)
    images = base.eval_dataset(spec.data, spec.split, spec.num_images)
    describe = json.loads(
        json.dumps(
            {  # as it reads back from the file
                "dataset": images.describe(),
                "num_images": spec.num_images,
                "inception_random": inception.random,
                "inception_dtype": spec.inception_dtype,
            },
            default=str,
        )
    )
    # rank 0 looks at the files and every rank follows (which pass runs is a collective decision)
    have_stats = main_rank_says(ctx.info.is_main and path.is_file(), ctx.info.device)
    have_pool = main_rank_says(ctx.info.is_main and pool_path.is_file(), ctx.info.device)
    if have_stats:
        stored = on_main(lambda: load_feature_stats(path)[1], ctx.info)
        if any(stored.get(k) != v for k, v in describe.items()):
            raise SetupError(
                f"real-image statistics {path} describe other images or another Inception "
                f"({ {k: stored.get(k) for k in describe} }); delete the file or pass another path"
            )
    if not (have_stats and have_pool):  # a reused statistics file without its per-image features: add them
        stats, pool = real_features(
            images,
            spec.num_images,
            inception=inception,
            batch_size=spec.batch_size,
            info=ctx.info,
            num_workers=spec.data.num_workers,
        )
        if ctx.info.is_main:
            if not have_stats:
                save_feature_stats(stats, path, describe)
            save_pool_features(pool, pool_path)
        barrier()
    return {
        "metrics": {},
        "path": str(path),
        "pool_features": str(pool_path),
        "inception_dtype": spec.inception_dtype,
        "random_weights": {"inception": inception.random},
    }
