"""MLflow tracking: the schema every sweep writes and every report reads.

Layout
- one experiment per grid, named `experiment_name(grid)`, created by the sweep driver (never by jobs:
  concurrent `set_experiment` calls race and lose runs into "Default");
- one parent run per grid (`TAG_ROLE` = "sweep") and one run per cell (`TAG_ROLE` = "cell"), the cell
  run a child of the parent (`mlflow.parentRunId`); the cell run id lives in the cell's output folder so
  that a requeued job logs into the same run;
- cell runs carry the tags below, the flattened resolved config as params, training curves as stepped
  metrics `<stage>/<name>`, and the final metrics named in `METRICS`.
"""

from __future__ import annotations

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
TAG_DEVICE = "titok.device"  # e.g. "cpu", "NVIDIA H100 80GB HBM3 x8"
TAG_FID_BACKEND = "titok.fid_backend"  # "torch-fidelity" (primary) ; clean-fid is logged as gfid_clean
TAG_REFERENCE = "titok.reference"  # what the FIDs compare against (dataset split / reference batch)
TAG_TOKENIZER = "titok.tokenizer"  # tokenizer variant name
TAG_GENERATOR = "titok.generator"  # generator variant name

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
    "gfid": "generation FID (ADM protocol, torch-fidelity Inception)",
    "gfid_clean": "generation FID from clean-fid (second backend)",
    "gfid_is": "Inception Score of the samples (10 splits)",
    "sfid": "spatial FID of the samples",
    "precision": "improved precision (k=3) of the samples",
    "recall": "improved recall (k=3) of the samples",
    "gfid_num_samples": "number of samples behind gfid",
    "probe_top1": "linear-probe top-1 accuracy on frozen tokenizer features",
    "samples_per_s": "generation throughput incl. de-tokenization (samples/s)",
    "cost_gpu_hours": "accelerator-hours of all training stages (CPU: core-hours)",
    "cost_wall_hours": "wall-clock hours of all training stages",
}
