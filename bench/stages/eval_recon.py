"""Stage `eval_recon`: the paper's rFID protocol and the image-similarity metrics of a tokenizer
(bench.eval.reconstruction; the metrics, intervals, gallery and token usage: docs/evaluation.md), against the
real_stats stage's statistics (the same float64 Inception, as the reference's evaluator); a stage-1-form tokenizer
decodes through its MaskGIT-VQGAN teacher. Identity: every setting but the batch size and where it runs
(base.EVAL_IGNORED), and the tokenizer, teacher and real-image statistics it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.core.io import atomic_file, atomic_write_json
from bench.core.loading import SetupError
from bench.stages import base, real_stats
from bench.stages.planning import PlanContext, eval_keywords
from bench.tracking import eval_tag
from bench.train.recipes import DataConfig

NAME = "eval_recon"
RESOURCES = "eval"
PRODUCT = None
RULE = base.IdentityRule(
    NAME, base.EVAL_IGNORED, {"tokenizer": "tokenizer", "teacher": "teacher", "real_stats": "real_stats"}
)


@dataclass(frozen=True)
class EvalReconSpec:
    tokenizer: str
    real_stats: str  # the real_stats stage's file
    data: DataConfig
    num_images: int
    split: str = "val"
    teacher: str | None = None  # decodes a stage-1-form tokenizer's proxy codes (ignored for pixel tokenizers)
    lpips: bool = True
    fid_method: str = "sqrtm"  # "sqrtm" (scipy, as the reference) or "eigh" (agrees to ~1e-6, much faster on CPUs)
    inception_dtype: str = real_stats.INCEPTION_DTYPE
    allow_random_weights: bool = False
    bootstrap: int = 200  # resamples behind the intervals (0: none)
    gallery: int = 8  # validation images saved with their reconstructions in gallery.png (0: none)
    batch_size: int = 64
    device: str = "auto"


def plan(c: PlanContext):
    """Every cell's tokenizer (a stage-1 one through its teacher), against the shared real_stats."""
    if "eval_recon" not in c.stages:
        return None
    ev, stats = c.p.eval, c.shared["real_stats"]
    return EvalReconSpec(
        tokenizer=c.tokenizer,
        real_stats=stats.product,
        data=c.val_data,
        num_images=ev.rfid_images,
        teacher=c.teacher,
        lpips=ev.lpips,
        fid_method=ev.fid_method,
        inception_dtype=ev.rfid_inception_dtype,
        bootstrap=ev.bootstrap,
        gallery=ev.gallery_images,
        **eval_keywords(c),
    ), {"tokenizer": c.tokenizer_task, "teacher": c.teacher_task, "real_stats": stats}


GALLERY = "gallery.png"
TOKEN_USAGE = "token_usage.json"


def run(spec: EvalReconSpec, ctx: base.Context) -> dict:
    from bench.core.loading import load_for_eval
    from bench.eval.reconstruction import evaluate_reconstruction, load_feature_stats, pool_features_path
    from bench.perceptual import LPIPS

    allow = spec.allow_random_weights
    loaded = load_for_eval(spec.tokenizer, teacher=spec.teacher, allow_random=allow)
    tok = loaded.tokenizer
    inception = base.inception(spec, ctx)
    stats, meta = load_feature_stats(spec.real_stats)
    made_with = {"inception_dtype": spec.inception_dtype, "inception_random": inception.random}
    if any(meta.get(k) != v for k, v in made_with.items()):
        raise SetupError(
            f"real-image statistics {spec.real_stats} were made with another Inception "
            f"({ {k: meta.get(k) for k in made_with} }, this evaluation: {made_with})"
        )
    for key in ("bootstrap", "gallery"):
        if getattr(spec, key) < 0:
            raise SetupError(f"eval_recon {key}={getattr(spec, key)}: give 0 (none) or a positive number")
    lpips = LPIPS(allow_random=allow) if spec.lpips else None
    images = base.eval_dataset(spec.data, spec.split, spec.num_images)
    stats_file = Path(spec.real_stats)
    metrics = evaluate_reconstruction(
        tok.model,
        images,
        num_images=spec.num_images,
        inception=inception,
        batch_size=spec.batch_size,
        info=ctx.info,
        teacher=loaded.teacher_model,
        real_stats=stats,
        lpips=lpips,
        fid_method=spec.fid_method,
        num_workers=spec.data.num_workers,
        bootstrap=spec.bootstrap,
        # the real images' per-image features, written beside their statistics by the real_stats stage
        real_pool_cache=pool_features_path(stats_file),
        gallery=spec.gallery,
        token_positions=True,
    )
    gallery, positions = metrics.pop("gallery", None), metrics.pop("token_positions", None)
    random = {**loaded.random, "inception": inception.random}
    if lpips is not None:
        random["lpips"] = lpips.random
    tags = base.feature_tags(
        "rfid",
        spec,
        inception,
        f"{meta.get('num_images')} real images' statistics "
        f"({images.describe()['name']} {spec.split}, {stats_file.name})",
    )
    if spec.bootstrap:
        tags[eval_tag("rfid", "interval")] = interval_description(spec.bootstrap, metrics["rfid_num_images"])
    artifacts = []
    if ctx.info.is_main and gallery is not None and gallery.shape[1]:
        artifacts.append(str(save_gallery(gallery, ctx.out / GALLERY, tok.label)))
    if ctx.info.is_main and positions is not None:
        artifacts.append(str(atomic_write_json(ctx.out / TOKEN_USAGE, {"tokenizer": tok.label, **positions})))
    return {
        "metrics": metrics,
        "random_weights": random,
        "tokenizer": tok.label,
        "data": images.describe(),
        "inception_dtype": spec.inception_dtype,
        "tags": tags,
        "artifacts": artifacts,
    }


def interval_description(resamples: int, num_images: int) -> str:
    """The tag titok.rfid_interval: what the intervals were made from; the method is docs/evaluation.md#intervals."""
    from bench.eval.intervals import BOOTSTRAP_SEED, INTERVAL_LEVEL

    return (
        f"{INTERVAL_LEVEL:.0%} bootstrap, {resamples} resamples (seed {BOOTSTRAP_SEED}) of the {num_images} "
        "evaluation images; method: docs/evaluation.md#intervals"
    )


def save_gallery(pairs, path: Path, label: str) -> Path:
    """uint8 [2, n, 3, H, W] (originals, reconstructions) -> a PNG of two rows of n tiles, described by its text
    chunk "titok.gallery" (JSON: rows, count, tile size, tokenizer)."""
    import json

    import numpy as np
    from PIL import Image, PngImagePlugin

    rows, n, _, h, w = pairs.shape
    canvas = pairs.permute(0, 3, 1, 4, 2).reshape(rows * h, n * w, 3).numpy().astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "titok.gallery",
        json.dumps(
            {"rows": ["original", "reconstruction"], "count": int(n), "tile": [int(h), int(w)], "tokenizer": label}
        ),
    )
    with atomic_file(path) as f:
        Image.fromarray(canvas).save(f, format="PNG", pnginfo=info)
    return path
