"""The MLflow schema every sweep writes and every report reads: experiment names, tag names, final metrics.

Layout: one experiment per grid (`experiment_name`); one parent run per grid (`TAG_ROLE` = "sweep") and one child run
per cell (`TAG_ROLE` = "cell", `mlflow.parentRunId` the parent). Cell runs carry the tags below, the flattened
resolved config as params (`flatten`), training curves as stepped metrics `<stage>/<name>`, the final metrics named in
`METRICS` and `system/*` metrics (bench.tracking.system).
"""

from __future__ import annotations

import re

EXPERIMENT_PREFIX = "titok-bench/"


def experiment_name(grid: str) -> str:
    return EXPERIMENT_PREFIX + grid


# ---- tags on cell runs (all values are strings) ------------------------------------------------------
TAG_ROLE = "titok.role"  # "sweep" | "cell"
TAG_GRID = "titok.grid"  # grid name, e.g. "latent_vs_size"
TAG_CELL = "titok.cell"  # cell name, e.g. "TiTok-S-32" (the tokenizer variant name)
TAG_CELL_ID = "titok.cell_id"  # short hash of the result-determining config
TAG_MODEL_SIZE = "titok.model_size"  # "S" | "B" | "L" (encoder size letter)
TAG_NUM_TOKENS = "titok.num_tokens"  # K, e.g. "32"
TAG_PRESET = "titok.preset"  # "tiny" | "paper" | ...
TAG_WEIGHTS_RANDOM = "titok.weights_random"  # "true" when any pretrained network was a random stand-in
TAG_SMOKE = "titok.smoke"  # "true": tiny preset, stand-in weights or < 50,000 samples; never vs the paper
TAG_STATUS = "titok.status"  # "running" | "finished" | "failed": all of the cell's stages
TAG_STAGES_DONE = "titok.stages_done"  # comma-separated stage names
TAG_CODE_VERSION = "titok.code_version"  # git commit (+ "-dirty")
TAG_CODE_SNAPSHOT = "titok.code_snapshot"  # the copy of the code the jobs import (bench.launch.snapshot_code)
TAG_SPEED_PATH = "titok.speed_path"  # the speed stage's mode, the path it ran and why, e.g. "auto -> fast (bf16+...)"
TAG_SAMPLE_PATH = "titok.sample_path"  # the inference path eval_gen's samples ran (exact fp32 for gFID parity)
TAG_DEVICE = "titok.device"  # e.g. "cpu", "NVIDIA H100 80GB HBM3 x8"
TAG_REFERENCE = "titok.reference"  # what the FIDs compare against (dataset split / reference batch)
TAG_TOKENIZER = "titok.tokenizer"  # tokenizer variant name
TAG_GENERATOR = "titok.generator"  # generator variant name
TAG_FAILED_STAGE = "titok.failed_stage"  # the stage whose job raised or was killed; removed when a stage runs again
TAG_ERROR = "titok.error"  # that job's exception, likewise
ERROR_TAGS = (TAG_FAILED_STAGE, TAG_ERROR)

# what an evaluation (rfid | gfid) used, as eval_tag(metric, kind) (bench.stages.base.feature_tags); clean-fid's
# distance is logged as the metric gfid_clean
EVAL_TAG_KINDS = ("features", "features_sha256", "inception_dtype", "distance", "reference", "interval")


def eval_tag(metric: str, kind: str) -> str:
    if kind not in EVAL_TAG_KINDS:
        raise ValueError(f"unknown evaluation tag kind {kind!r}; known: {EVAL_TAG_KINDS}")
    return f"titok.{metric}_{kind}"


def precision_tag(stage: str) -> str:
    """The precision a training stage ran at (bench.core.dist.runnable_precision), e.g. titok.stage1_precision."""
    return f"titok.{stage}_precision"


# which registry files (bench.weights) a stage used, as weights_tag(name, kind): "revision" (the hub commit it was
# fetched at, or its URL) and "sha256", or that it was a random stand-in (bench.stages.task)
WEIGHTS_TAG_KINDS = ("revision", "sha256")


def weights_tag(name: str, kind: str) -> str:
    if kind not in WEIGHTS_TAG_KINDS:
        raise ValueError(f"unknown weights tag kind {kind!r}; known: {WEIGHTS_TAG_KINDS}")
    safe = re.sub(r"[^\w.\-]", "_", name)  # MLflow keys: no ':' (Windows) nor '@'
    return f"titok.weights.{safe}.{kind}"


# ---- final metrics of a cell run -----------------------------------------------------------------------
METRICS = {
    "rfid": "reconstruction FID (torch-fidelity Inception, vs the evaluation images)",
    "rfid_is": "Inception Score of the reconstructions",
    "psnr": "reconstruction PSNR (dB)",
    "ssim": "reconstruction SSIM",
    "lpips": "reconstruction LPIPS (VGG)",
    "codebook_usage": "fraction of codebook entries used on the evaluation images",
    "codebook_entropy": "entropy of the code histogram (bits)",
    "rfid_num_images": "number of images behind rfid",
    "eval_skipped_images": "evaluation images skipped as unreadable (not counted in rfid_num_images)",
    "gfid": "generation FID (ADM protocol, torch-fidelity Inception)",
    "gfid_clean": "generation FID from clean-fid (second backend)",
    "gfid_is": "Inception Score of the samples (ADM: consecutive chunks of 5,000, the last one shorter)",
    "sfid": "spatial FID of the samples",
    "precision": "improved precision (k=3) of the samples",
    "recall": "improved recall (k=3) of the samples",
    "gfid_num_samples": "number of samples behind gfid",
    "probe_top1": "linear-probe top-1 accuracy on frozen tokenizer features",
    "samples_per_s": "generation throughput incl. de-tokenization (samples/s)",
    "encode_images_per_s": "tokenizer encode throughput, a tokenizer without a generator (images/s)",
    "decode_images_per_s": "tokenizer decode throughput, a tokenizer without a generator (images/s)",
    "cost_gpu_hours": "accelerator-hours of all training stages (CPU: core-hours)",
    "cost_wall_hours": "wall-clock hours of all training stages",
}


# the uncertainty of a final metric: `<metric>_lo` and `<metric>_hi` (a 95% interval), logged beside it; how an
# evaluation made its intervals is the tag eval_tag(<rfid | gfid | probe>, "interval")
INTERVAL_METRICS = ("rfid", "rfid_is", "psnr", "ssim", "lpips", "gfid", "gfid_is", "precision", "recall", "probe_top1")


def interval_keys(metric: str) -> tuple[str, str]:
    return f"{metric}_lo", f"{metric}_hi"


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested configs as MLflow params."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
