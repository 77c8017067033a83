"""The frozen tokenizer that generator training and pretokenization read tokens from: loaded by its source
(`load_tokenizer`), and named by it (`tokenizer_identity`, what pretokenized tokens record and are checked
against)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import models
from models.source_records import file_sha256


def load_tokenizer(source: str) -> models.TiTok:
    """A frozen tokenizer from our checkpoint, a released name, a hub-style folder or an official file."""
    tokenizer = models.from_pretrained(source)
    if not isinstance(tokenizer, models.TiTok):
        raise ValueError(f"{source} is a {tokenizer.kind}, not a TiTok tokenizer")
    return tokenizer.eval().requires_grad_(False)


def tokenizer_identity(source: str) -> str:
    """What names a tokenizer's tokens: a file by the sha256 of its content, a folder by those of its files, a
    registered name as it is."""
    path = Path(source).expanduser()
    if path.is_file():
        return "sha256:" + file_sha256(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        listing = json.dumps([(str(p.relative_to(path)), file_sha256(p)) for p in files])
        return "files:" + hashlib.sha256(listing.encode()).hexdigest()
    return str(source)
