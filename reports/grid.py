"""The grids a report can draw: a grid definition (sweeps/grid/<name>.yaml) as the cells it promises, and the one
error type of reports/ (a problem the user can fix, said in one line)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
GRID_DIR = REPO_ROOT / "sweeps" / "grid"

_CELL_NAME = re.compile(r"^(?:TA-)?TiTok-([SBL])[SBL]?-(\d+)")


class ReportError(Exception):
    """A problem the user can fix (unknown grid, no runs, unreachable store), said in one line."""


@dataclass(frozen=True)
class Grid:
    """The cells a grid definition (sweeps/grid/<name>.yaml) promises, in plotting order."""

    name: str
    cells: tuple[str, ...]
    num_tokens: tuple[int, ...]  # the K axis ticks
    scaling: bool  # a sizes x K grid (line plots against K) rather than a list of named models

    @classmethod
    def from_cfg(cls, cfg: Mapping | DictConfig) -> Grid:
        cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        sizes, ks, models = (
            cfg.get("sizes") or [],
            [int(k) for k in cfg.get("num_tokens") or []],
            cfg.get("models") or [],
        )
        cells = tuple(f"TiTok-{s}-{k}" for s in sizes for k in ks) + tuple(models)
        if not cells:
            raise ReportError(f"grid '{cfg.get('name')}' defines no cells (no sizes x num_tokens, no models)")
        ticks = ks or sorted({k for k in (cell_size_and_tokens(c)[1] for c in models) if k is not None})
        return cls(name=str(cfg["name"]), cells=cells, num_tokens=tuple(ticks), scaling=bool(sizes and ks))


def available_grids() -> list[str]:
    return sorted(p.stem for p in GRID_DIR.glob("*.yaml"))


def load_grid(name: str) -> Grid:
    path = GRID_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ReportError(f"unknown grid '{name}': choose one of {', '.join(available_grids())} (files in {GRID_DIR})")
    return Grid.from_cfg(OmegaConf.load(path))


def cell_size_and_tokens(cell: str) -> tuple[str | None, int | None]:
    """Encoder size letter and K from a variant name (used for cells that have no run to carry the tags)."""
    m = _CELL_NAME.match(cell)
    return (m.group(1), int(m.group(2))) if m else (None, None)
