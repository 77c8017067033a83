"""The record of submitted jobs (`<grid folder>/jobs.jsonl`), which status, cancel, clean and the next invocation
read, and what tells whether a recorded job still runs: a local job's process identity (PIDs are recycled), a SLURM
job's state. Jobs are named by their tasks' `StageTask.uid` (`cell/stage-identity`), so a task whose settings
changed is never taken for the queued job of its old settings."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import submitit

from bench.plan import Plan

JOBS_FILE = "jobs.jsonl"
ACTIVE_STATES = (
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "RESIZING",
    "SUSPENDED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
)


def record_jobs(
    plan: Plan,
    launcher: str,
    jobs: list[tuple[str, list[str]]],
    submitted: dict[str, submitit.Job] | None = None,
    code: str | os.PathLike | None = None,
) -> None:
    """Append (job id, task uids) lines: what status, cancel, clean and the next invocation look at. A local job's
    id is its process id, recorded with the process's identity (`process_identity`): PIDs are recycled.
    `submitted`: job id -> its submitit job, whose log and result file are recorded (bench.status reads how a job
    ended there); `code`: the snapshot the jobs import (bench.clean keeps it while they are queued or running)."""
    with open(plan.root / JOBS_FILE, "a") as f:
        for job_id, keys in jobs:
            record = {"launcher": launcher, "job_id": job_id, "tasks": keys, "time": time.time()}
            if code:
                record["code"] = str(code)
            if job_id in (submitted or {}):
                paths = submitted[job_id].paths
                record.update(log=str(paths.stderr), result=str(paths.result_pickle))
            if launcher == "local":
                record["process"] = process_identity(int(job_id))
            f.write(json.dumps(record) + "\n")


def process_identity(pid: int) -> str | None:
    """`<boot id>/<start time>` of a live process (its start in clock ticks since boot, /proc/<pid>/stat field
    22): the same PID with another identity is another process. None when there is no such process, or it has
    ended and waits for its parent to reap it (a zombie, state Z or X)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 is the first
    return None if fields[0] in "ZX" else f"{boot}/{fields[19]}"


def child_processes(pid: int) -> list[int]:
    """The PIDs of a live process's children (all its threads'); [] when it has ended."""
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    kids = []
    for thread in threads:
        try:
            kids += [int(k) for k in (thread / "children").read_text().split()]
        except OSError:
            pass
    return kids


def recorded_jobs(plan: Plan) -> list[dict]:
    path = plan.root / JOBS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def slurm_states(job_ids: list[str], env: dict | None = None) -> dict[str, str]:
    """job id -> SLURM state (squeue for queued/running jobs, sacct for the rest)."""
    if not job_ids:
        return {}
    states: dict[str, str] = {}
    # -r: one line per array element (pending elements are otherwise folded into one "12_[3-20]" line)
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)], capture_output=True, text=True, env=env
    )
    for line in out.stdout.splitlines():
        jid, state = line.split()[:2]
        states[jid] = state
    missing = [j for j in job_ids if j not in states]
    if missing:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(missing)],
            capture_output=True,
            text=True,
            env=env,
        )
        for line in out.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 2:
                states.setdefault(parts[0], parts[1].split()[0])
    return states


def active_tasks(plan: Plan) -> dict[str, str]:
    """task uid -> job id of a SLURM job of this grid that is still queued or running."""
    records = [r for r in recorded_jobs(plan) if r["launcher"] == "slurm"]
    states = slurm_states([r["job_id"] for r in records])
    active = {}
    for r in records:
        if states.get(r["job_id"], "").split(" ")[0] in ACTIVE_STATES:
            for key in r["tasks"]:
                active[key] = r["job_id"]
    return active
