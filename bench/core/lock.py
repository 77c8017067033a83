"""The one way bench/ gives something one owner at a time (a stage folder, a run record, a buffer, a fresh sqlite
store): an exclusive `flock` on a file. The kernel releases it when its holder's process ends, however it ends
(SIGKILL, the out-of-memory killer), so no lock outlives its holder and none is ever stale. (A child forked while
the lock is held, such as a DataLoader worker, shares it until it exits too; those exit with their parent.)

    with file_lock(path) as f: ...                       # waits for the lock; f: the file, open to read and append
    with owner_lock(path, waiting) as claimed: ...       # the same, naming its holder: `waiting(holder PID)` is
                                                         # called once when another process holds it
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def file_lock(path: str | os.PathLike, blocked: Callable[[BinaryIO], None] | None = None) -> Iterator[BinaryIO]:
    """Hold an exclusive lock on `path` (created, with its folder) for the block. `blocked(f)`: called once, before
    waiting, when another process holds the lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if blocked:
                blocked(f)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def owner_lock(path: str | os.PathLike, waiting: Callable[[int | None], None]) -> Iterator[None]:
    """`file_lock` on a file that holds its holder's PID, so that a process waiting for it can say whom it waits
    for: `waiting(pid)` (None: not written yet)."""
    with file_lock(path, lambda f: waiting(holder(f))) as f:
        f.truncate(0)
        f.write(f"{os.getpid()}\n".encode())
        f.flush()
        yield


@contextmanager
def polled_owner_lock(
    path: str | os.PathLike, waiting: Callable[[int | None], None], agree: Callable[[bool], bool], poll_s: float = 1.0
) -> Iterator[None]:
    """`owner_lock` taken by tries that never block, `poll_s` apart, until `agree(got this try)` is true: the ranks
    of a job learn rank 0's outcome through one short collective per try, so none waits inside a collective while
    another job owns the lock (the ranks that are not rank 0 call `agree` as often, see `follow_polled_lock`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        told = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                got = True
            except BlockingIOError:
                got = False
            if agree(got):
                break
            if got:  # the others said no: never hold it unannounced
                fcntl.flock(f, fcntl.LOCK_UN)
            if not told:
                waiting(holder(f))
                told = True
            time.sleep(poll_s)
        try:
            f.truncate(0)
            f.write(f"{os.getpid()}\n".encode())
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def follow_polled_lock(agree: Callable[[bool], bool], poll_s: float = 1.0) -> None:
    """The other ranks' side of `polled_owner_lock`: one `agree` per try of rank 0, until it has the lock."""
    while not agree(False):
        time.sleep(poll_s)


def holder(f: BinaryIO) -> int | None:
    f.seek(0)
    text = f.read().decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
