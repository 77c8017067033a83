"""Shared pieces of the data layer: the error type and the sample-key convention.

A *sample key* is what a sampler hands to `dataset[...]`: either a plain index, or `(index, sample_seed)`
where `sample_seed` fixes the random augmentation of that one sample. The training loader
(`bench.data.loader.make_loader`) passes seeded keys to datasets whose `takes_sample_seeds` is true, so
that crops and flips are a pure function of (seed, epoch, position) and a resumed run sees the same pixels.
"""

from __future__ import annotations

import json
import os
import socket


class DatasetError(ValueError):
    """Bad data configuration or unusable data: says which path or value, and what was expected."""


def split_key(key: int | tuple[int, int]) -> tuple[int, int | None]:
    """`index` or `(index, sample_seed)` -> (index, sample_seed or None)."""
    if isinstance(key, tuple):
        index, sample_seed = key
        return int(index), int(sample_seed)
    return int(key), None


def first_readable(read, key: int | tuple[int, int], n: int, what: str):
    """The sample at `key` (`index` or `(index, sample_seed)`) of a dataset of `n` items, or where `read(index,
    sample_seed)` returns None (unreadable, reported by the dataset), the next readable one: training keeps its
    batch sizes. `what` names the items in errors ("images in <folder>")."""
    index, sample_seed = split_key(key)
    if not 0 <= index < n:
        raise IndexError(f"index {index} out of range for {n} {what}")
    for attempt in range(n):
        sample = read((index + attempt) % n, sample_seed)
        if sample is not None:
            return sample
    raise DatasetError(f"none of the {n} {what} could be read; see skipped()")


def log_skipped(folder: str, file_prefix: str, path: str, error: str) -> None:
    """Append one skipped item to this process's log in `folder` (`<file_prefix>-<host>-<pid>.jsonl`), which
    every process of a run (workers, ranks) writes beside the others."""
    name = f"{file_prefix}-{socket.gethostname()}-{os.getpid()}.jsonl"
    with open(os.path.join(folder, name), "a") as f:
        f.write(json.dumps({"path": path, "error": error}) + "\n")


def read_skipped(folder: str | None, file_prefix: str, keep) -> dict[str, str]:
    """path -> error of the entries of every `<file_prefix>-*.jsonl` log in `folder` whose path `keep(path)`
    accepts (the folder may be shared with other splits and datasets)."""
    found: dict[str, str] = {}
    if folder is None or not os.path.isdir(folder):
        return found
    for name in sorted(os.listdir(folder)):
        if not (name.startswith(f"{file_prefix}-") and name.endswith(".jsonl")):
            continue
        with open(os.path.join(folder, name)) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a killed process
                    continue
                if keep(entry["path"]):
                    found.setdefault(entry["path"], entry["error"])
    return found
