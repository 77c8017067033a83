"""Source records: where a fetched file or folder came from and the sha256 of each of its files.

Every fetch writes one beside what it fetched (`.source.json` in a folder, `.<file>.source.json` beside a file):
repo, revision asked for, commit resolved, URL, sha256 of each file; every later load checks the files against it
(`check_source`), so a changed file or one fetched at another commit than the pin is refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path

from .atomic_files import atomic_path
from .state_dicts import CheckpointError

SOURCE_RECORD = ".source.json"
_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_commit(revision: str | None) -> bool:
    return bool(revision) and _COMMIT.fullmatch(revision) is not None


@functools.cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime in the key: a file rewritten in place is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, computed once per process for each version (size, mtime) of the file."""
    p = Path(path).resolve()
    st = p.stat()
    return _sha256(str(p), st.st_size, st.st_mtime_ns)


def source_record_path(path: str | os.PathLike) -> Path:
    """The source record of a fetched folder (inside it) or file (a hidden file beside it)."""
    p = Path(path)
    return p / SOURCE_RECORD if p.is_dir() else p.with_name(f".{p.name}{SOURCE_RECORD}")


def read_source_record(path: str | os.PathLike) -> dict | None:
    record = source_record_path(path)
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{record} is not valid JSON ({err}): delete it and fetch {path} again") from None


def write_source_record(path: str | os.PathLike, files: list[str] | None = None, **source) -> dict:
    """Record where `path` (a file, or a folder holding `files`) came from (`source`: repo, revision, commit, url)
    and the sha256 of each of its files."""
    p = Path(path)
    named = {f: p / f for f in files} if p.is_dir() else {p.name: p}
    record = {**source, "files": {name: file_sha256(f) for name, f in named.items()}}
    with atomic_path(source_record_path(p)) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def check_source(path: str | os.PathLike, pinned: str | None = None) -> dict | None:
    """The source record of `path` once its files are checked against it (None: there is none, as for files
    placed by hand). CheckpointError when a file is not the one that was fetched, or when the record's commit is
    not the commit `pinned`."""
    p = Path(path)
    record = read_source_record(p)
    if record is None:
        return None
    if is_commit(pinned) and record.get("commit") and record["commit"] != pinned:
        raise CheckpointError(
            f"{p} holds commit {record['commit']} of {record.get('repo')}, but the pin file "
            f"models/hub_revisions.json pins {pinned}: fetch it again (python -m bench.weights "
            "fetch <name>, or models.from_pretrained)"
        )
    for name, want in record.get("files", {}).items():
        f = p / name if p.is_dir() else p
        got = file_sha256(f) if f.is_file() else "missing"
        if got != want:
            raise CheckpointError(
                f"{f} is not the file that was fetched (sha256 {got[:16]}..., its source record "
                f"{source_record_path(p)} says {want[:16]}...): delete {p} and fetch it again, or "
                "delete the record if the new file is the one you mean"
            )
    return record
