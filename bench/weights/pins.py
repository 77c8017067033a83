"""`pin`: write the commits the cached hub files were fetched at (their source records) into the pin file,
models/hub_revisions.json, so that every checkout fetches those commits."""

from __future__ import annotations

import json

from bench.core.io import atomic_write_json
from models import source_records, variants

from .checks import verify
from .entries import entry, forget_registry
from .resolution import locate


def pin(names: list[str]) -> dict[str, str]:
    """Write into the pin file (models/hub_revisions.json) the commits the present, verified hub files of `names`
    were fetched at (their source records); returns repo -> commit of what it pinned."""
    pins_file = variants.PINS_FILE
    data = json.loads(pins_file.read_text()) if pins_file.is_file() else {}
    pinned = {}
    for n in names:
        e = entry(n)
        p = locate(n)
        commit = (source_records.read_source_record(p) or {}).get("commit") if p is not None else None
        if e.hub_repo and commit and verify(n):
            pinned[e.hub_repo] = commit
    if pinned:
        atomic_write_json(pins_file, {**data, **pinned}, indent=2)
        forget_registry()
    return pinned
