"""What a stage used: `recording` collects the entries a block resolves; `provenance` is what a run logs of each
(the hub commit or URL it came from and its sha256, or that it was a random stand-in)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from models import source_records

from .entries import entry

_RECORDINGS: list[dict[str, Path | None]] = []


@contextmanager
def recording() -> Iterator[dict[str, Path | None]]:
    """Collect the entries the block resolves (`require`/`resolve`): name -> file, None for a random stand-in."""
    used: dict[str, Path | None] = {}
    _RECORDINGS.append(used)
    try:
        yield used
    finally:
        _RECORDINGS.remove(used)


def note_use(name: str, path: Path | None) -> None:
    for used in _RECORDINGS:
        if path is not None or name not in used:  # a file that was used outranks a stand-in of it
            used[name] = path


def provenance(name: str, path: Path | None) -> dict[str, str]:
    """What a run that used the entry logs of it: "revision" (the hub commit it was fetched at, from its source
    record; a fixed-URL file: its URL) and "sha256" (a folder: file=sha256 per file), or that it was a stand-in."""
    if path is None:
        return {"revision": "random stand-in (no file: seeded random weights)", "sha256": "none (random stand-in)"}
    e = entry(name)
    record = source_records.read_source_record(path) or {}
    if record.get("commit"):
        revision = record["commit"]
    elif e.hub_repo:
        revision = f"unknown: no source record (placed by hand, not fetched); {e.hub_repo} is " + (
            f"pinned to {e.revision}" if e.revision else "not pinned"
        )
    else:
        revision = record.get("url") or e.url
    if e.is_folder:
        digest = ";".join(f"{f}={source_records.file_sha256(Path(path) / f)}" for f in e.hub_files)
    else:
        digest = source_records.file_sha256(path)
    return {"revision": revision, "sha256": digest}
