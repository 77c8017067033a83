"""The stages of a sweep, one module each: its spec and `plan` (building it from the preset), `run(spec, ctx) ->
result with "metrics"`, its identity. The sweep (bench/plan.py, bench/launch/) and `python -m bench.eval` call the
same functions.

    from bench.stages import STAGES, Context, EvalReconSpec
    result = STAGES["eval_recon"].run(EvalReconSpec(...), Context(Path("out")))   # result["metrics"]["rfid"]

    teacher          the smoke MaskGIT-VQGAN teacher (shared)      stage1 / stage2 / single / generator   training
    real_stats       rFID's real-image statistics (shared)         eval_recon   rFID, PSNR, SSIM, LPIPS, codebook
    reference_batch  gFID's reference batch (shared)               eval_gen     ADM gFID, IS, sFID, precision/recall
    probe            linear probe of the frozen encoder            speed        sampling throughput
    pretokenize      the tokens of each training image's centre crop and flip, once per tokenizer (the generator
                     stage trains on them instead of encoding every batch)

The identity rule and what a stage module holds: bench/stages/base.py; tasks and `run_task`: bench/stages/task.py.
"""

from __future__ import annotations

from .base import Context, DataConfig  # DataConfig: for callers that may not import bench.train
from .eval_gen import EvalGenSpec
from .eval_recon import EvalReconSpec
from .probe import ProbeSpec
from .real_stats import RealStatsSpec
from .reference_batch import ReferenceBatchSpec
from .registry import STAGES
from .speed import SpeedSpec
from .task import StageTask, Tracking, any_random, cell_cost, final_metrics, new_task, run_task, single_process

__all__ = [
    "STAGES",
    "Context",
    "DataConfig",
    "EvalGenSpec",
    "EvalReconSpec",
    "ProbeSpec",
    "RealStatsSpec",
    "ReferenceBatchSpec",
    "SpeedSpec",
    "StageTask",
    "Tracking",
    "any_random",
    "cell_cost",
    "final_metrics",
    "new_task",
    "run_task",
    "single_process",
]
