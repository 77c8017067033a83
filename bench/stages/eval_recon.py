"""Stage `eval_recon`: the paper's rFID protocol and the image-similarity metrics of a tokenizer
(bench.eval.reconstruction): rfid, rfid_is, psnr, ssim, lpips, codebook usage and entropy, rfid_num_images.

Protocol: the real images' statistics come from the real_stats stage (the same dtype, float64 Inception: the
reference's rFID evaluator); a stage-1-form tokenizer decodes through the MaskGIT-VQGAN teacher.

Identity: the images (dataset name, image size, classes, seed, split, num_images), LPIPS on or off, the Frechet
distance's matrix square root (fid_method), the Inception dtype, the stand-in permission, and the inputs: the
tokenizer, the teacher (a stage's identity, or the released name / file hash) and the real-image statistics; not
the batch size, device, data root and workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.core.loading import SetupError
from bench.stages import base, real_stats
from bench.train.recipes import DataConfig

NAME = "eval_recon"
RESOURCES = "eval"
PRODUCT = None
RULE = base.IdentityRule(NAME, base.EVAL_IGNORED,
                         {"tokenizer": "tokenizer", "teacher": "teacher", "real_stats": "real_stats"})


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
    batch_size: int = 64
    device: str = "auto"



def run(spec: EvalReconSpec, ctx: base.Context) -> dict:
    from bench.core.loading import load_for_eval
    from bench.eval.reconstruction import evaluate_reconstruction, load_feature_stats
    from bench.perceptual import LPIPS

    allow = spec.allow_random_weights
    loaded = load_for_eval(spec.tokenizer, teacher=spec.teacher, allow_random=allow)
    tok = loaded.tokenizer
    inception = base.inception(spec, ctx)
    stats, meta = load_feature_stats(spec.real_stats)
    made_with = {"inception_dtype": spec.inception_dtype, "inception_random": inception.random}
    if any(meta.get(k) != v for k, v in made_with.items()):
        raise SetupError(f"real-image statistics {spec.real_stats} were made with another Inception "
                         f"({ {k: meta.get(k) for k in made_with} }, this evaluation: {made_with})")
    lpips = LPIPS(allow_random=allow) if spec.lpips else None
    images = base.eval_dataset(spec.data, spec.split, spec.num_images)
    metrics = evaluate_reconstruction(
        tok.model, images, num_images=spec.num_images, inception=inception, batch_size=spec.batch_size,
        info=ctx.info, teacher=loaded.teacher_model, real_stats=stats, lpips=lpips,
        fid_method=spec.fid_method, num_workers=spec.data.num_workers)
    random = {**loaded.random, "inception": inception.random}
    if lpips is not None:
        random["lpips"] = lpips.random
    return {"metrics": metrics, "random_weights": random, "tokenizer": tok.label, "data": images.describe(),
            "inception_dtype": spec.inception_dtype,
            "tags": base.feature_tags("rfid", spec, inception, f"{meta.get('num_images')} real images' statistics "
                                      f"({images.describe()['name']} {spec.split}, {Path(spec.real_stats).name})")}
