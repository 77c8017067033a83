"""Launching a plan with submitit: the job callable (`job`), the code it imports (`snapshot`), the sweep's MLflow
runs (`runs`), the record of submitted jobs (`records`), the local and SLURM launchers (`local`, `slurm`) and
cancellation (`cancel`). What the entry points and tests use is importable from here."""

from bench.launch.cancel import cancel
from bench.launch.job import CellContext, StageJob, finish_cell
from bench.launch.local import KILLED, longest_first, report_ended, run_local
from bench.launch.records import (
    JOBS_FILE,
    child_processes,
    process_identity,
    record_jobs,
    recorded_jobs,
    slurm_states,
)
from bench.launch.runs import flush_buffers, prepare_tracking
from bench.launch.slurm import submit_slurm, wait_slurm
from bench.launch.snapshot import (
    CODE_DIR,
    SNAPSHOT_SKIP,
    code_env,
    code_setup,
    code_version,
    job_environment,
    snapshot_code,
    tracked_files,
)

__all__ = [
    "CODE_DIR",
    "JOBS_FILE",
    "KILLED",
    "SNAPSHOT_SKIP",
    "CellContext",
    "StageJob",
    "cancel",
    "child_processes",
    "code_env",
    "code_setup",
    "code_version",
    "finish_cell",
    "flush_buffers",
    "job_environment",
    "longest_first",
    "prepare_tracking",
    "process_identity",
    "record_jobs",
    "recorded_jobs",
    "report_ended",
    "run_local",
    "slurm_states",
    "snapshot_code",
    "submit_slurm",
    "tracked_files",
    "wait_slurm",
]
