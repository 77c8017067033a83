"""Running the GPU check: every asked-for check in turn (a check that raises is one FAIL row and the next still
runs), the wall time against the budget, and what the run left out."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .config import CHECKS, Config, release
from .distributed import DDP_RANKS, check_ddp, check_nccl
from .inference import check_generation, check_graphs, check_paths, check_peak
from .table import FAIL, INFO, OK, SKIP, Row
from .training_steps import check_train_speed, check_training

BUDGET_S = 480.0  # the whole full-size CUDA run


CHECK_FUNCTIONS: dict[str, Callable[[Config, dict], list[Row]]] = {
    "peak": check_peak,
    "paths": check_paths,
    "graphs": check_graphs,
    "training": check_training,
    "nccl": check_nccl,
    "ddp": check_ddp,
    "generation": check_generation,
    "train_speed": check_train_speed,
}


def not_checked(cfg: Config, checks: tuple[str, ...], rows: list[Row]) -> list[str]:
    """What this run did not check, one plain line each."""
    out = [f"the {name} check (not asked for)" for name in CHECKS if name not in checks]
    if "ddp" in checks and any(r.check == "multi-rank" and r.status == SKIP for r in rows):
        out.append(
            f"no multi-rank NCCL row: DDP, no_sync and gather_tensors over NCCL need {DDP_RANKS} GPUs, "
            f"this machine has {torch.cuda.device_count()}"
        )
    if cfg.device.type != "cuda":
        out.append(
            "CUDA: NCCL, CUDA graphs, CUDA autocast and GPU memory were not exercised (ran on the CPU; the "
            "CPU may run fp16/bf16 steps in fp32, as the rows say)"
        )
    if cfg.toy:
        out.append(
            "full-size models and the paper's per-GPU batches (out-of-memory would show only there): toy sizes ran"
        )
    if "training" in checks:
        out.append("training in a precision other than the paper preset's for each stage (one precision per stage ran)")
    out += [
        "more than one node (inter-node NCCL), data loading and checkpoint writes",
        "numbers with trained weights: every model is random",
    ]
    return out


def run_checks(cfg: Config, checks: tuple[str, ...] = CHECKS, log: Callable[[str], None] | None = None) -> list[Row]:
    """Every check in turn; a check that raises is one FAIL row with its error, and the next one still runs."""
    state: dict = {}
    rows: list[Row] = []
    start = time.perf_counter()
    for name in checks:
        t0 = time.perf_counter()
        if log:
            log(f"{name} ...")
        try:
            new = CHECK_FUNCTIONS[name](cfg, state)
        except Exception as e:  # noqa: BLE001 - the table reports it; the other checks still run
            new = [
                Row(
                    name,
                    "",
                    "",
                    f"{type(e).__name__}: {e}".splitlines()[0][:300],
                    "runs",
                    FAIL,
                    time.perf_counter() - t0,
                )
            ]
            release(cfg.device)
        rows.extend(new)
        if log:
            for r in new:
                log(f"  {r.status:5} {r.subject} {r.setting}: {r.result}")
    total = time.perf_counter() - start
    if cfg.full_cuda and set(checks) == set(CHECKS):
        rows.append(
            Row(
                "total",
                "wall time",
                "all checks",
                f"{total:.0f} s",
                f"<= {BUDGET_S:.0f} s",
                OK if total <= BUDGET_S else FAIL,
                total,
            )
        )
    else:
        rows.append(Row("total", "wall time", ", ".join(checks), f"{total:.0f} s", "", INFO, total))
    return rows
