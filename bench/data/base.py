"""Shared pieces of the data layer: the error type and the sample-key convention.

A *sample key* is what a sampler hands to `dataset[...]`: either a plain index, or `(index, sample_seed)`
where `sample_seed` fixes the random augmentation of that one sample. The training loader
(`bench.data.loader.make_loader`) passes seeded keys to datasets whose `takes_sample_seeds` is true, so
that crops and flips are a pure function of (seed, epoch, position) and a resumed run sees the same pixels.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """Bad data configuration or unusable data: says which path or value, and what was expected."""


def split_key(key: int | tuple[int, int]) -> tuple[int, int | None]:
    """`index` or `(index, sample_seed)` -> (index, sample_seed or None)."""
    if isinstance(key, tuple):
        index, sample_seed = key
        return int(index), int(sample_seed)
    return int(key), None
