"""`action=clean`: what a sweep's folder no longer needs, listed with its size (`dry_run`) or removed.

- code snapshots (`<grid>/code/<version>-<hash>/`) that no queued or running job was submitted with, but the newest
  (what the next sweep of unchanged code reuses);
- the acknowledged part of each tracking buffer (a buffer the store has taken whole is emptied);
- temporary files whose writer is dead (a PID gone on this host, or untouched for an hour: the rule the writers
  apply to their own targets), and snapshot copies left half made;
- with `stages`, the stage folders of identities the current plan does not use (another setting's results).

It never touches what a live job owns: a stage folder whose lock is held, a snapshot an active job imports.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bench import launch
from bench import tracking as T
from bench.core.lock import file_lock
from bench.plan import SHARED, Plan
from bench.stages import STAGES
from bench.stages.task import LOCK
from bench.status import QUEUED_STATES, RUNNING_STATES, lock_holder


@dataclass(frozen=True)
class Item:
    path: Path
    size: int  # bytes freed
    what: str  # why it goes


def size_of(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def active_records(plan: Plan) -> list[dict]:
    """The job records of jobs that are queued or running (SLURM: squeue/sacct; local: the recorded process)."""
    records = launch.recorded_jobs(plan)
    ids = [r["job_id"] for r in records if r["launcher"] == "slurm"]
    known = bool(ids) and shutil.which("squeue") is not None  # without a SLURM client: every SLURM job may be live
    states = launch.slurm_states(ids) if known else {}

    def live(r: dict) -> bool:
        if r["launcher"] == "slurm":
            return not known or states.get(r["job_id"], "").split(" ")[0] in RUNNING_STATES + QUEUED_STATES
        return bool(r.get("process")) and launch.process_identity(int(r["job_id"])) == r["process"]

    return [r for r in records if live(r)]


def candidates(plan: Plan, stages: bool = False) -> list[Item]:
    """What `clean` removes now, in a stable order."""
    items: list[Item] = []
    code = plan.root / launch.CODE_DIR
    if code.is_dir():
        active = active_records(plan)
        used = {Path(r["code"]).resolve() for r in active if r.get("code")}
        snapshots = sorted(
            (p for p in code.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime
        )
        unknown = any(not r.get("code") for r in active)  # a job recorded before snapshots were: keep them all
        for p in snapshots[:-1]:
            if p.resolve() not in used and not unknown:
                items.append(Item(p, size_of(p), "code snapshot no queued or running job imports"))
        for p in code.glob(".*.tmp"):
            if p.is_dir() and time.time() - p.stat().st_mtime > _stale_age():
                items.append(Item(p, size_of(p), "a snapshot copy its writer left half made"))
    for buffer in sorted(plan.root.rglob(T.BUFFER_FILE)):
        acked = _acked(buffer)
        if acked and acked == buffer.stat().st_size:
            items.append(Item(buffer, acked, "tracking buffer the store has taken whole (emptied)"))
    for tmp in sorted(plan.root.rglob(".*.tmp")):
        if tmp.is_file() and _writer_gone(tmp):
            items.append(Item(tmp, size_of(tmp), "temporary file of a dead writer"))
    if stages:
        current = {Path(t.out_dir).resolve() for t in plan.tasks()}
        for folder in [plan.root / SHARED, *(c.dir for c in plan.cells)]:
            for p in sorted(folder.glob("*-*")) if folder.is_dir() else []:
                if (
                    p.is_dir()
                    and p.name.rpartition("-")[0] in STAGES
                    and p.resolve() not in current
                    and lock_holder(p / LOCK) is None
                ):
                    items.append(Item(p, size_of(p), "stage folder of an identity the current plan does not use"))
    return items


def _stale_age() -> float:
    from models.atomic_files import STALE_TEMP_AGE_S

    return STALE_TEMP_AGE_S


def _writer_gone(tmp: Path) -> bool:
    """The rule atomic writers apply to their own targets' temporaries (models.atomic_files): named
    .<target>.<host>.<pid>.<token>.tmp, gone when that PID is dead on this host or the file is an hour old."""
    from models.atomic_files import _HOST, _temp_owner_gone

    at = tmp.name.rfind(f".{_HOST}.")
    return _temp_owner_gone(tmp, tmp.name[: at + 1] if at > 0 else ".")


def _acked(buffer: Path) -> int:
    import json

    acked = buffer.with_name(T.ACKED_FILE)
    try:
        return int(json.loads(acked.read_text())["offset"]) if acked.is_file() else 0
    except (ValueError, KeyError):
        return 0


def remove(items: list[Item]) -> list[Item]:
    """Remove `items` (as `candidates` listed them); returns those removed. A buffer is emptied under its lock, and
    only if the store has still taken all of it; a stage folder only while no process holds its lock."""
    done = []
    for item in items:
        p = item.path
        if p.name == T.BUFFER_FILE:
            with file_lock(p) as f:  # the loggers' own lock: none appends meanwhile
                if _acked(p) != f.seek(0, os.SEEK_END):
                    continue
                f.truncate(0)
                os.fsync(f.fileno())
                # an offset past the end reads as 0 (tracking.RunLogger._acked_offset): a crash here loses nothing
                from bench.core.io import atomic_write_json

                atomic_write_json(p.with_name(T.ACKED_FILE), {"offset": 0})
        elif p.is_dir():
            if (p / LOCK).exists() and lock_holder(p / LOCK) is not None:
                continue
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        done.append(item)
    return done


def describe(items: list[Item], root: Path, dry_run: bool) -> str:
    verb = "would remove" if dry_run else "removed"
    lines = [
        f"  {verb} {human(i.size):>9}  {i.path.relative_to(root) if i.path.is_relative_to(root) else i.path}"
        f"  ({i.what})"
        for i in items
    ]
    total = sum(i.size for i in items)
    lines.append(f"{verb} {len(items)} items, {human(total)}" + (" (dry run: nothing removed)" if dry_run else ""))
    return "\n".join(lines)
