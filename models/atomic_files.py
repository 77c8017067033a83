"""The one atomic writer of the project (bench/core/io.py builds its writers on it).

`atomic_path` hands out a temporary file beside the target, named after the target, host and PID, created with
ordinary permissions (0666 & ~umask, not mkstemp's 0600), then fsyncs it and renames it over the target. A writer
that is killed (SIGKILL, preemption) leaves its temporary file behind; the next write of the same target removes it
once its writer is gone.
"""

from __future__ import annotations

import glob
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STALE_TEMP_AGE_S = 3600  # a temporary file untouched this long has no live writer, wherever it ran
_HOST = socket.gethostname()


def _temp_owner_gone(tmp: Path, prefix: str) -> bool:
    """Whether the writer of temporary file `tmp` (named <prefix><host>.<pid>.<token>.tmp) is gone: a dead PID on
    this host; a writer on another host (a requeued job lands elsewhere), or a name of another pattern, when the
    file has not been written to for STALE_TEMP_AGE_S."""
    host, _, pid = tmp.name[len(prefix) : -len(".tmp")].rpartition(".")[0].rpartition(".")
    if host == _HOST and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
    try:
        return time.time() - tmp.stat().st_mtime > STALE_TEMP_AGE_S
    except FileNotFoundError:  # its writer just finished
        return False


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files that killed writers of `path` left beside it; returns them."""
    prefix = f".{path.name}."
    removed = []
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        if _temp_owner_gone(tmp, prefix):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary file beside `path` for the block to write (by name, keeping the file: a writer that
    replaces it brings its own permissions); when the block ends without an exception it is fsynced and renamed
    over `path`, and the folder fsynced; otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # before this write needs the space
    tmp = path.parent / f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as to any file
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
