"""What the loop does about being stopped: the preemption / time-limit signal asks for a save at the next step
boundary, and the stage's wall time is kept over all its attempts, with a heartbeat on disk so that the time an
attempt ran past its last checkpoint (work done again) counts as lost."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from bench.core.io import atomic_write_json

PROGRESS = "progress.json"  # the wall time the loop has run, rewritten every HEARTBEAT_S: what a kill loses
HEARTBEAT_S = 60.0
# the signal SLURM sends through submitit before a time limit and on preemption (submitit's default): the loop saves
# at the next step boundary, then hands the signal to the handler it stood in for (submitit's requeue and exit)
SAVE_SIGNAL = signal.SIGUSR2


@contextmanager
def signal_asks_to_save(signum: int):
    """While training, `signum` asks for a save at the next step boundary instead of acting at once: the yielded
    list then holds a function that does what the signal would have done (calls the handler it arrived for, or the
    default action), which the loop calls after saving. Outside the main thread (no signal handlers) nothing
    changes."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    previous = signal.getsignal(signum)
    if previous is None:  # a handler installed from outside Python: left alone
        yield []
        return
    pending: list[Callable[[], None]] = []

    def deliver(frame) -> None:
        signal.signal(signum, previous)
        try:
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signum)
        finally:
            signal.signal(signum, ask)

    def ask(sig, frame) -> None:
        if not pending:
            pending.append(lambda: deliver(frame))

    signal.signal(signum, ask)
    try:
        yield pending
    finally:
        signal.signal(signum, previous)


def progress_wall_s(path: Path) -> float:
    """The wall time an earlier attempt had run at its last heartbeat (0: none recorded)."""
    try:
        return float(json.loads(path.read_text())["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


class WallClock:
    """A stage's wall time over its attempts, started now: `prior_wall_s` and `lost_s` are the last checkpoint's;
    an earlier attempt whose heartbeat in `out`/PROGRESS ran past it adds that time to both. `write`: this rank
    writes the heartbeats."""

    def __init__(self, out: Path, prior_wall_s: float, lost_s: float, write: bool):
        ran = progress_wall_s(out / PROGRESS)
        if ran > prior_wall_s:  # an earlier attempt ran past the checkpoint: that work is done again, its time lost
            prior_wall_s, lost_s = ran, lost_s + ran - prior_wall_s
        self.path, self.write = out / PROGRESS, write
        self.prior_wall_s, self.lost_s = prior_wall_s, lost_s
        self.t0 = self.last_save = self.last_beat = time.time()

    def wall_s(self) -> float:
        """All attempts' wall time up to now."""
        return self.prior_wall_s + time.time() - self.t0

    def elapsed_s(self) -> float:
        """This attempt's."""
        return time.time() - self.t0

    def save_due(self, every_s: float) -> bool:
        """Whether `every_s` seconds (<= 0: never) have passed since the last save."""
        return every_s > 0 and time.time() - self.last_save >= every_s

    def heartbeat_due(self) -> bool:
        return time.time() - self.last_beat >= HEARTBEAT_S

    def heartbeat(self, step: int, wall: float | None = None) -> None:
        """Record in PROGRESS that the loop reached `step` after `wall` seconds (default: now)."""
        self.last_beat = time.time()
        if self.write:
            atomic_write_json(self.path, {"step": step, "wall_s": wall or self.wall_s(), "lost_s": self.lost_s})

    def saved(self, step: int, wall: float) -> None:
        """A resume point of `step` at `wall` seconds was written."""
        self.last_save = time.time()
        self.heartbeat(step, wall)
