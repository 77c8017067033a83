"""Stage `real_stats`: the real images' Inception pool-feature statistics for rFID (mean, covariance and count of
the `num_images` evaluation images, uint8 as the reconstructions), computed once and read by every eval_recon.

Protocol: Inception in float64, as the reference implementation's rFID evaluator runs torch-fidelity's network
(INCEPTION_DTYPE; eval_recon uses the same and checks the file says so).

Identity: the images (dataset name, image size, classes, seed, split, num_images), the Inception dtype and the
stand-in permission; not the batch size, device, data root and workers, or where the file goes (`path`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench.core.dist import barrier
from bench.core.loading import SetupError
from bench.stages import base
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



def run(spec: RealStatsSpec, ctx: base.Context) -> dict:
    from bench.eval.reconstruction import load_feature_stats, real_feature_stats, save_feature_stats

    path = Path(spec.path) if spec.path else ctx.out / PRODUCT
    inception = base.inception(spec, ctx)
    images = base.eval_dataset(spec.data, spec.split, spec.num_images)
    describe = json.loads(json.dumps({  # as it reads back from the file
        "dataset": images.describe(), "num_images": spec.num_images, "inception_random": inception.random,
        "inception_dtype": spec.inception_dtype}, default=str))
    if path.is_file():
        _, stored = load_feature_stats(path)
        if any(stored.get(k) != v for k, v in describe.items()):
            raise SetupError(f"real-image statistics {path} describe other images or another Inception "
                             f"({ {k: stored.get(k) for k in describe} }); delete the file or pass another path")
    else:
        stats = real_feature_stats(images, spec.num_images, inception=inception, batch_size=spec.batch_size,
                                   info=ctx.info, num_workers=spec.data.num_workers)
        if ctx.info.is_main:
            save_feature_stats(stats, path, describe)
        barrier()
    return {"metrics": {}, "path": str(path), "inception_dtype": spec.inception_dtype,
            "random_weights": {"inception": inception.random}}
