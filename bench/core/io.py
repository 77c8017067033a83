"""The one way bench/ writes a file that others read (checkpoints, npz files, features, results, records):
atomically, through models.atomic_files.atomic_path (the one implementation, which the model zoo's checkpoint
writer shares: models/ imports nothing from bench/). The content goes to a temporary file beside the target (named
after the target, host and PID, so concurrent writers never share one), is flushed and fsynced, has ordinary file
permissions (group- and world-readable under the umask, not mkstemp's 0600: results on a shared cluster folder stay
readable to the group) and is renamed over the target; the folder is fsynced so the rename survives a crash. A
reader never sees a torn file under the real name; a writer that fails removes its temporary file, and one that is
killed (SIGKILL, preemption) has its temporary file removed by the next write of the same target.

    with atomic_file(path) as f: np.savez(f, **arrays)      # any writer that takes a binary file object
    atomic_write_json(path, {"metrics": ...})
    atomic_write_text(path, text)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces `path` when the block ends without an exception."""
    from models.atomic_files import atomic_path  # here: the model zoo brings torch, which bench.tracking's readers
    # (reports/) never need

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, data, **dumps) -> Path:
    """JSON (indent 2 and str() for what json cannot encode, unless `dumps` says otherwise), with a final
    newline."""
    dumps = {"indent": 2, "default": str, **dumps}
    return atomic_write_text(path, json.dumps(data, **dumps) + "\n")
