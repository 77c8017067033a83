"""Cancelling a grid's queued and running jobs, SLURM's and local ones."""

from __future__ import annotations

import os
import signal
import subprocess

from bench.launch.records import active_tasks, child_processes, process_identity, recorded_jobs
from bench.plan import Plan


def cancel(plan: Plan) -> list[str]:
    """Cancel this grid's queued/running jobs (SLURM: scancel; local: terminate the job processes)."""
    cancelled = []
    slurm_ids = sorted(set(active_tasks(plan).values()))
    if slurm_ids:
        subprocess.run(["scancel", *slurm_ids], check=False)
        cancelled += slurm_ids
    for r in recorded_jobs(plan):
        if r["launcher"] != "local" or r.get("process") is None or process_identity(int(r["job_id"])) != r["process"]:
            continue  # ended, or the PID now names another process
        # SIGINT: submitit's local controller stops its tasks on it (SIGTERM is forwarded to the task, which
        # ignores it). Its tasks get it first: a controller interrupted while still inside the Popen of a task
        # that already runs (a loaded machine) never learns of that task and would leave it running.
        for pid in [*child_processes(int(r["job_id"])), int(r["job_id"])]:
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        cancelled.append(r["job_id"])
    return cancelled
