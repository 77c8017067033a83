"""Reconcile a plan with what runs it: each stage's state from its result, its stage lock, its checkpoint and the
latest job recorded for it (SLURM: squeue/sacct; local: the recorded process identity and the job's own files), and
the MLflow run of a job that ended without a result marked once with the reason.

    states = reconcile(plan)          # what `action=status` and the start of every sweep do
    print(render(plan, states))       # one screen; `as_json(states)` for scripts

A stage is `done` (its result is there), `running` (a live job or process owns it), `queued` (a SLURM job waits
for it), `ended` (its latest job ended without a result, on this stage or before it; `reason` says how) or `todo`
(no job has it, or its job ended on an earlier stage). Each says what a rerun does with it (`rerun`).
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import launch
from bench import tracking as T
from bench.plan import KNOWN_STAGES, SHARED, Plan
from bench.stages import StageTask, Tracking
from bench.stages.task import LOCK, LOGGED, RESULT, SPEC

RUNNING_STATES = ("RUNNING", "COMPLETING", "CONFIGURING", "RESIZING", "SUSPENDED")
QUEUED_STATES = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED")
# how a job ended without a result, in words, and the MLflow status its run gets for it
REASONS = {
    "CANCELLED": ("cancelled (scancel, or a dependency that failed)", "KILLED"),
    "TIMEOUT": ("ran past its time limit with no requeue left", "FAILED"),
    "OUT_OF_MEMORY": ("killed by the memory limit SLURM enforces (out of memory)", "FAILED"),
    "NODE_FAIL": ("its node failed", "FAILED"),
    "PREEMPTED": ("preempted and not requeued", "FAILED"),
    "BOOT_FAIL": ("its node failed to boot", "FAILED"),
    "DEADLINE": ("reached its deadline", "FAILED"),
    "FAILED": ("exited with an error before Python could record one (see the log)", "FAILED"),
    "COMPLETED": ("ended without writing the stage's result", "FAILED"),
    "killed": (launch.KILLED, "FAILED"),
    "driver lost": ("ended with its sweep driver (the driver was killed or lost its machine)", "KILLED"),
    "failed": ("raised an error (recorded in the run by the job)", "FAILED"),
}
DRIVER_GONE = "the sweep driver (PID"  # the start of the line a local job prints as it ends with its driver
# what slurmstepd writes into a job's log as it kills it for its memory (jobacct_gather's OverMemoryKill: sacct
# then says FAILED; a cgroup's limit makes it say OUT_OF_MEMORY itself)
MEMORY_KILLED = ("exceeded memory limit", "exceeded job memory limit")
LOG_TAIL = 1 << 16  # the bytes of a job's log read for how it ended: what SLURM and the job write as it ends
MARK = "reconciled"  # <run folder>/reconciled-<job id>: that job's end is marked in the run


@dataclass
class StageState:
    key: str  # cell/stage
    uid: str  # cell/stage-identity
    state: str  # done | running | queued | ended | todo
    reason: str | None = None  # a key of REASONS when ended
    detail: str = ""  # the reason in words, or who runs it
    job: str | None = None
    launcher: str | None = None
    log: str | None = None
    step: int | None = None  # the step of the stage's resume point
    reached: int | None = None  # the latest step it reached (its progress or its last logged curve point)
    steps: int | None = None  # its schedule's length
    rerun: str = ""


def reconcile(plan: Plan, mark: bool = True) -> list[StageState]:
    """The state of every stage of `plan`; with `mark`, the MLflow run of each job that ended without a result is
    marked (once per job: a later reconcile leaves it as a rerun made it)."""
    records = launch.recorded_jobs(plan)
    latest = {uid: r for r in records for uid in r["tasks"]}  # the file is in submission order
    slurm_ids = sorted({r["job_id"] for r in latest.values() if r["launcher"] == "slurm"})
    # no SLURM client here (a local rerun of a grid once run on a cluster): those jobs' states are unknown
    slurm = launch.slurm_states(slurm_ids) if slurm_ids and shutil.which("squeue") else {}
    states = [_state(t, latest.get(t.uid), slurm) for t in plan.tasks()]
    by_key = {s.key: s for s in states}
    for t in plan.tasks():
        by_key[t.key].rerun = _rerun(t, by_key[t.key], by_key)
    if mark:
        for cell, run_dir in [(SHARED, plan.root), *((c.name, c.run_dir) for c in plan.cells)]:
            ended = [s for s in states if s.key.split("/")[0] == cell and s.state == "ended"]
            if ended:
                _mark(Path(run_dir), ended[0])
    return states


def _state(task: StageTask, record: dict | None, slurm: dict[str, str]) -> StageState:
    s = StageState(task.key, task.uid, "todo")
    if task.done:
        s.state = "done"
        return s
    s.step, s.steps = resume_step(task), getattr(getattr(task.spec, "loop", None), "steps", None)
    s.reached = reached_step(task, s.step)
    if record:
        s.job, s.launcher, s.log = record["job_id"], record["launcher"], record.get("log")
    holder = lock_holder(Path(task.out_dir) / LOCK)
    if holder is not None:
        s.state, s.detail = "running", f"PID {holder or 'unknown'} owns the stage"
        return s
    if record is None:
        return s
    # a stage its ended job never started is that job's end when every stage the job had before it is done (the
    # job ended at its start: cancelled while queued, killed while importing); else an earlier one ended it
    ours = (Path(task.out_dir) / SPEC).exists() or _first_unfinished(task, record)
    if record["launcher"] == "slurm":
        state = slurm.get(record["job_id"], "").split(" ")[0]
        if state in RUNNING_STATES:
            s.state, s.detail = "running", f"SLURM {state}"
        elif state in QUEUED_STATES:
            s.state, s.detail = "queued", f"SLURM {state}"
        elif ours and (state or _raised_reason(record)):
            s.state, s.reason = "ended", _raised_reason(record) or _slurm_reason(state, record)
        elif not state:
            s.detail = "SLURM knows the job no longer (no accounting record)"
        return s
    if record.get("process") and launch.process_identity(int(record["job_id"])) == record["process"]:
        s.state, s.detail = "running", f"local job {record['job_id']}"
        return s
    if not ours:
        return s
    s.state = "ended"
    s.reason = _raised_reason(record) or ("driver lost" if DRIVER_GONE in _log_tail(record) else "killed")
    return s


def _first_unfinished(task: StageTask, record: dict) -> bool:
    """Whether `task` is the first stage of its job's record that has no result (the one the job was on)."""
    tasks = record["tasks"]
    before = tasks[: tasks.index(task.uid)] if task.uid in tasks else []
    grid = Path(task.out_dir).parents[1]  # a uid names its stage's folder under the grid's
    return all((grid / uid / RESULT).is_file() for uid in before)


def _slurm_reason(state: str, record: dict) -> str:
    """sacct's state of an ended job, OUT_OF_MEMORY where SLURM's log line says it killed the job for its memory."""
    if state == "FAILED" and any(line in _log_tail(record).lower() for line in MEMORY_KILLED):
        return "OUT_OF_MEMORY"
    return state


def _log_tail(record: dict) -> str:
    """The end of a job's log ("" without one)."""
    try:
        with open(record["log"], "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL))
            return f.read().decode(errors="replace")
    except (KeyError, TypeError, OSError):
        return ""


def _raised_reason(record: dict) -> str | None:
    """How a job that ended by a Python exception ended (submitit's result file says so): "TIMEOUT" where submitit
    would not requeue it past its time limit (launcher.max_timeouts spent), else "failed" (the job recorded its
    error in its run itself); None when the job raised nothing."""
    path = Path(record["result"]) if record.get("result") else None
    if not path or not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            kind, value = pickle.load(f)[:2]
    except Exception:  # a torn result file: as if none
        return None
    if kind != "error":
        return None
    return "TIMEOUT" if "Job not requeued because: timed-out" in str(value) else "failed"


def _rerun(task: StageTask, s: StageState, states: dict[str, StageState]) -> str:
    if s.state == "done":
        return "skips it (done)"
    if s.state in ("running", "queued"):
        return "leaves it to its job" if s.launcher == "slurm" else "waits for its owner, then resumes or skips it"
    waits = [k for k in task.needs if states[k].state != "done"]
    after = f" after {', '.join(waits)}" if waits else ""
    if s.step:
        return f"resumes {task.stage} at step {s.step}" + after
    return f"runs {task.stage} from the start" + after


def resume_step(task: StageTask) -> int | None:
    """The step of the stage's newest readable resume point (its pickle only: the tensors are mapped, not read;
    the rerun checks the content), None without one."""
    from bench.train.checkpoint import CHECKPOINT, PREVIOUS_CHECKPOINT

    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = Path(task.out_dir) / name
        if path.is_file():
            try:
                import torch

                return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
            except Exception:
                continue
    return None


def reached_step(task: StageTask, resume: int | None) -> int | None:
    """The latest step the stage reached: the newest of its resume point, its progress (rewritten at each
    checkpoint and heartbeat) and its last logged curve point; None when it has none."""
    from bench.train.preemption import PROGRESS

    steps = [resume] if resume else []
    out = Path(task.out_dir)
    try:
        steps.append(int(json.loads((out / PROGRESS).read_text())["step"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        steps.append(int((out / LOGGED).read_text()))
    except (OSError, ValueError):
        pass
    return max(steps) if steps else None


def lock_holder(path: Path) -> int | None:
    """The PID (0: not written yet) of the live process holding the stage lock at `path`; None when none does."""
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = f.read().decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(f, fcntl.LOCK_UN)
        return None


def reason_text(s: StageState) -> str:
    words = REASONS.get(s.reason or "", (s.reason or "", ""))[0]
    job = f"{s.launcher} job {s.job}" if s.job else "its job"
    return f"{s.reason}: {job} {words}"


def _mark(run_dir: Path, s: StageState) -> None:
    """Mark the run recorded in `run_dir` KILLED or FAILED for the job of `s`, once per job: a marker file, taken
    atomically, says it was done (a job that raised marked its run itself)."""
    record = run_dir / T.RUN_ID_FILE
    if not record.is_file() or not s.job:
        return
    try:
        fd = os.open(run_dir / f"{MARK}-{s.job}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
    except FileExistsError:
        return
    if s.reason == "failed":
        return
    status = REASONS.get(s.reason or "", ("", "FAILED"))[1]
    log = Tracking(json.loads(record.read_text())["tracking_uri"], str(run_dir)).logger()
    error = reason_text(s) + (f"; log: {s.log}" if s.log else "")
    log.set_tags({T.TAG_STATUS: status.lower(), T.TAG_FAILED_STAGE: s.key.split("/")[1], T.TAG_ERROR: error})
    log.set_status(status)
    log.flush()


# ---- what a person and a script read ----------------------------------------------------------------------------
SHORT = {"done": "done", "todo": "todo", "queued": "queued"}


def _short(s: StageState) -> str:
    if s.state == "running":
        return f"run {s.reached or 0}/{s.steps}" if s.steps else "running"
    if s.state == "ended":
        return {"OUT_OF_MEMORY": "OOM", "driver lost": "drv-lost"}.get(s.reason or "", s.reason or "ended")
    return SHORT[s.state]


def render(plan: Plan, states: list[StageState]) -> str:
    """One screen: the shared stages, a cell x stage table of short states, then one entry per stage that is
    running, queued or ended without a result (why, its job and log, what a rerun does)."""
    by_key = {s.key: s for s in states}
    lines = [f"grid {plan.grid}  preset {plan.preset}{'  (smoke)' if plan.smoke else ''}  outputs {plan.root}"]
    for t in plan.shared:
        lines.append(f"  {t.key:<28} {_short(by_key[t.key])}")
    stages = [s for s in KNOWN_STAGES if any(t.stage == s for c in plan.cells for t in c.tasks)]
    stages += sorted({t.stage for c in plan.cells for t in c.tasks} - set(stages))
    width = {s: max(len(s), 9) + 2 for s in stages}
    lines.append("  " + f"{'cell':<22}{'id':<10}" + "".join(f"{s:<{width[s]}}" for s in stages))
    for c in plan.cells:
        have = {t.stage: by_key[t.key] for t in c.tasks}
        marks = "".join(f"{_short(have[s]) if s in have else '-':<{width[s]}}" for s in stages)
        lines.append(f"  {c.name:<22}{c.cell_id:<10}{marks}".rstrip())
    notable = [s for s in states if s.state in ("running", "queued", "ended")]
    for s in notable:
        head = reason_text(s) if s.state == "ended" else f"{s.state}: {s.detail}"
        step = f"; at step {s.reached}/{s.steps}" if s.state == "running" and s.reached else ""
        step += f"; resume point at step {s.step}/{s.steps}" if s.step else ""
        lines.append(f"  {s.key}: {head}{step}")
        if s.log:
            lines.append(f"      log: {s.log}")
        lines.append(f"      rerun: {s.rerun}")
    counts = {k: sum(s.state == k for s in states) for k in ("done", "running", "queued", "ended", "todo")}
    lines.append(f"{len(plan.cells)} cells, {len(states)} stages: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return "\n".join(lines)


def as_json(plan: Plan, states: list[StageState]) -> str:
    return json.dumps(
        {
            "grid": plan.grid,
            "outputs": str(plan.root),
            "stages": [dict(asdict(s), reason_text=reason_text(s) if s.reason else None) for s in states],
        },
        indent=2,
    )
