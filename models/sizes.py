"""The one table of transformer sizes. Paper sizes S/B/L; `tiny` is the parity cases' size; the `toy-*`
sizes keep S < B < L for CPU smoke runs (head dim 32)."""

from __future__ import annotations

from typing import NamedTuple


class ViTSize(NamedTuple):
    width: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0


VIT_SIZES: dict[str, ViTSize] = {
    "S": ViTSize(512, 8, 8),
    "B": ViTSize(768, 12, 12),
    "L": ViTSize(1024, 24, 16),
    "tiny": ViTSize(128, 2, 2),
    "toy-S": ViTSize(64, 2, 2),
    "toy-B": ViTSize(96, 3, 3),
    "toy-L": ViTSize(128, 4, 4),
}

# Names used by the reference implementation's configs.
OFFICIAL_SIZE_NAMES = {"small": "S", "base": "B", "large": "L", "tiny": "tiny"}


def vit_size(name: str) -> ViTSize:
    try:
        return VIT_SIZES[name]
    except KeyError:
        raise ValueError(f"unknown model size {name!r}; known sizes: {', '.join(VIT_SIZES)}") from None
