"""Reports: a grid's MLflow runs -> a tidy table, the paper's Figure 4 panels, tables and one HTML page.

    python -m reports grid=latent_vs_size          # the command line (see reports/__main__.py)
    build_report(load_grid("released"), None, "reports/out/released")  # None: $MLFLOW_TRACKING_URI or the default

Output layout in out_dir: figures/<panel>.png|svg and figures/combined.png|svg, figures/gallery_<size>.png and
figures/token_usage.png (from the cells' eval_recon artifacts, where logged), tables/<name>.csv|md (summary for a
sizes x K grid, tidy, grid, cost, and reproduction and released for grid `released`), index.html;
artifacts/<cell>/ holds the downloaded artifacts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from .collect import collect, fetch_artifacts
from .collection import IgnoredRun
from .figures import write_figures, write_gallery, write_token_usage
from .grid import Grid, ReportError, load_grid
from .html import write_html
from .paper import paper_numbers
from .summary import summary_table
from .tables import build_tables, write_tables
from .verdicts import verdict_frame, verdict_line

__all__ = ["Grid", "IgnoredRun", "ReportError", "ReportResult", "build_report", "load_grid"]


@dataclass(frozen=True)
class ReportResult:
    grid: str
    out_dir: Path
    tidy: pd.DataFrame  # one row per kept cell and metric (also tables/tidy.csv)
    html: Path
    figures: list[Path]
    tables: list[Path]
    missing_cells: dict[str, str]  # cell -> why it has no kept run
    fallback_cells: dict[str, str]  # cell -> why its kept run is not titok.status=finished
    ignored_runs: list[IgnoredRun]
    smoke: bool
    verdict: str | None = None  # grid released: the one-line reproduction verdict (reports/verdicts.py)


def build_report(
    grid_cfg: Grid | Mapping | DictConfig | str, tracking_uri: str | None, out_dir: str | Path
) -> ReportResult:
    """Read the grid's runs, keep the latest finished run per cell, write figures, tables and index.html.

    grid_cfg: a grid config (name, sizes, num_tokens, models), a Grid, or a grid name; tracking_uri None
    means MLFLOW_TRACKING_URI or the sweep's default store. Raises ReportError (one line) for an unknown
    grid, an unreachable store or a grid without runs.
    """
    if isinstance(grid_cfg, str):
        grid = load_grid(grid_cfg)
    elif isinstance(grid_cfg, Grid):
        grid = grid_cfg
    else:
        grid = Grid.from_cfg(grid_cfg)
    col = collect(grid, tracking_uri)
    out = Path(out_dir)
    tidy, paper = col.table(), paper_numbers(grid)
    tab_dir = out / "tables"
    tab_dir.mkdir(parents=True, exist_ok=True)
    tidy_csv = tab_dir / "tidy.csv"
    tidy.to_csv(tidy_csv, index=False)
    figures = write_figures(col, tidy, paper, out / "figures")
    artifacts = fetch_artifacts(col, out / "artifacts")
    gallery = write_gallery(col, artifacts, out / "figures")
    token_usage = write_token_usage(col, artifacts, out / "figures")
    figures += gallery + ([token_usage] if token_usage else [])
    tables = build_tables(col, tidy, paper)
    if grid.scaling:
        tables.insert(0, summary_table(col, tidy))
    table_files = [tidy_csv, *write_tables(tables, tab_dir)]
    verdict = verdict_line(verdict_frame(col, paper)) if grid.name == "released" else None
    html = write_html(
        col, out / "figures", tables, out / "index.html", gallery=gallery, token_usage=token_usage, verdict=verdict
    )
    return ReportResult(
        grid=grid.name,
        out_dir=out,
        tidy=tidy,
        html=html,
        figures=figures,
        tables=table_files,
        missing_cells=dict(col.missing),
        fallback_cells=col.fallbacks,
        ignored_runs=list(col.ignored),
        smoke=col.smoke,
        verdict=verdict,
    )
