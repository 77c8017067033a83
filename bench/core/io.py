"""The one way bench/ writes a file that others read (checkpoints, npz files, features, results, records):
atomically. The content goes to a temporary file beside the target (a unique name, so concurrent writers never
share one), is flushed and fsynced, gets ordinary file permissions (group- and world-readable under the umask,
not mkstemp's 0600: results on a shared cluster folder stay readable to the group) and is renamed over the
target; the folder is fsynced so the rename survives a crash. A reader never sees a torn file under the real
name, and a writer that fails or is interrupted removes its temporary file.

    with atomic_file(path) as f: np.savez(f, **arrays)      # any writer that takes a binary file object
    atomic_write_json(path, {"metrics": ...})
    atomic_write_text(path, text)

(models/checkpoints.py keeps its own safetensors writer with the same guarantees: models/ imports nothing from
bench/.)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces `path` when the block ends without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


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
