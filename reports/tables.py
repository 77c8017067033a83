"""Tables, each as CSV and Markdown: the grid (cells x metrics), the training cost per cell, and for grid
`released` ours beside the paper with the difference.

The grid, cost and released tables carry a `smoke` column and every table's Markdown a heading note. For grid
`released` also the reproduction verdicts (reports/verdicts.py): ours against the paper's and the release's numbers
within a tolerance per metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench import tracking as T

from . import verdicts as V
from .collection import Collection
from .figures import SMOKE_TITLE
from .grid import cell_size_and_tokens

RELEASED_METRICS = ["rfid", "gfid", "gfid_is", "samples_per_s"]
COST_METRICS = ["cost_gpu_hours", "cost_wall_hours"]
# the sweep's estimate beside each measured cost metric: run tags that bench/cost/stages.py names (TAG_EST_*) and
# bench.launch sets from `action=plan`'s estimate on the cluster of the sweep's latest invocation
COST_ESTIMATE_TAGS = {"cost_gpu_hours": "titok.cost_est_gpu_hours", "cost_wall_hours": "titok.cost_est_wall_hours"}
COST_BASIS_TAG = "titok.cost_est_basis"


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    notes: list[str]
    frame: pd.DataFrame


def cell_info(col: Collection) -> pd.DataFrame:
    """One row per cell of the grid (missing ones included): identity, status, smoke flag, run id."""
    rows = []
    for cell in col.grid.cells:
        run = col.runs.get(cell)
        if run is None:  # size and K from the name; no smoke flag: there is no result to flag
            size, k = cell_size_and_tokens(cell)
            rows.append(
                {
                    "cell": cell,
                    "model_size": size,
                    "num_tokens": k,
                    "status": f"missing: {col.missing[cell]}",
                    "smoke": None,
                    "smoke_reason": "",
                    "preset": "",
                    "run_id": "",
                }
            )
            continue
        rows.append(
            {
                "cell": cell,
                "model_size": run.model_size,
                "num_tokens": run.num_tokens,
                "status": "finished (fallback)" if run.fallback else "finished",
                "smoke": run.smoke,
                "smoke_reason": run.smoke_reason,
                "preset": run.preset,
                "run_id": run.run_id,
            }
        )
    return pd.DataFrame(rows).astype({"num_tokens": "Int64"}).set_index("cell")


def _wide(tidy: pd.DataFrame, cells: tuple[str, ...]) -> pd.DataFrame:
    """cells x metrics (METRICS order) from the tidy table."""
    wide = tidy.pivot(index="cell", columns="metric", values="value").reindex(list(cells))
    return wide[[m for m in T.METRICS if m in wide.columns]]


def _notes(col: Collection) -> list[str]:
    notes = []
    smoke = [r for r in col.runs.values() if r.smoke]
    if smoke:
        notes.append(
            f"**{SMOKE_TITLE}**: {len(smoke)} of {len(col.runs)} cells are smoke results "
            f"({'; '.join(col.smoke_reasons)}); they are never compared with the paper's numbers."
        )
    notes.append("; ".join(f"{k}: {v}" for k, v in col.provenance(brief=True).items()))
    if col.missing:
        notes.append(f"Missing cells (no finished run): {', '.join(col.missing)}.")
    return notes


def grid_table(col: Collection, tidy: pd.DataFrame) -> Table:
    frame = cell_info(col).join(_wide(tidy, col.grid.cells)).reset_index()
    return Table("grid", f"Grid {col.grid.name}: final metrics per cell", _notes(col), frame)


def cost_table(col: Collection, tidy: pd.DataFrame) -> Table:
    info = cell_info(col)[["model_size", "num_tokens", "status", "smoke"]]
    info = info.assign(device=[col.runs[c].tags.get(T.TAG_DEVICE, "") if c in col.runs else "" for c in info.index])
    actual = _wide(tidy, col.grid.cells).reindex(columns=COST_METRICS)
    cost = pd.DataFrame(index=actual.index)
    for m in COST_METRICS:  # estimate beside actual
        cost[f"{m}_est"] = [
            _number(col.runs[c].tags.get(COST_ESTIMATE_TAGS[m])) if c in col.runs else float("nan")
            for c in actual.index
        ]
        cost[m] = actual[m]
    frame = info.join(cost).reset_index()
    total = {"cell": "total (logged cells)", **{m: cost[m].sum(min_count=1) for m in cost.columns}}
    frame = pd.concat([frame, pd.DataFrame([total])], ignore_index=True)
    notes = _notes(col) + [
        "cost_gpu_hours: accelerator-hours of all training stages (CPU runs: core-hours); "
        "cost_wall_hours: their wall-clock hours. `_est`: the sweep's estimate before it ran "
        "(analytic FLOPs / (device peak x assumed utilisation), bench/cost/)."
    ]
    bases = sorted({r.tags[COST_BASIS_TAG] for r in col.runs.values() if COST_BASIS_TAG in r.tags})
    if bases:
        notes.append("Estimated on: " + " | ".join(bases) + ".")
    return Table("cost", f"Grid {col.grid.name}: training cost per cell, estimate beside actual", notes, frame)


def _number(text: str | None) -> float:
    try:
        return float(text) if text is not None else float("nan")
    except ValueError:
        return float("nan")


def released_table(col: Collection, tidy: pd.DataFrame, paper: pd.DataFrame) -> Table:
    """Per released model: ours, the reference (the paper's or the release's), ours minus it and the verdict within
    the metric's tolerance (reports/verdicts.py); the reference is shown for every row, smoke rows never pass."""
    info = cell_info(col)
    ours = _wide(tidy, col.grid.cells).reindex(columns=RELEASED_METRICS)
    theirs = paper.pivot(index="cell", columns="metric", values="value").reindex(
        index=list(col.grid.cells), columns=RELEASED_METRICS
    )
    judged = V.verdict_frame(col, paper)
    models = V.model_verdicts(judged)
    frame = info[["status", "smoke", "run_id"]].copy()
    frame["verdict"] = [models[c] for c in frame.index]
    for m in RELEASED_METRICS:
        rows = judged[judged["metric"] == V.TOLERANCES[m].label].set_index("cell")
        frame[m] = ours[m]
        frame[f"{m}_ref"] = theirs[m]
        frame[f"{m}_diff"] = rows["diff"]
        frame[f"{m}_verdict"] = rows["verdict"]
    frame["note"] = [
        f"smoke result ({info.at[c, 'smoke_reason']})"
        if c in col.runs and col.runs[c].smoke
        else ("no finished run" if c in col.missing else "")
        for c in frame.index
    ]
    notes = [
        f"**{V.verdict_line(judged)}**",
        *_notes(col),
        V.tolerance_note(),
        "`<metric>_ref`: the paper's or the official release's number (reports/paper_numbers.csv; each one's "
        "source in tables/reproduction.csv); `<metric>_diff` = ours \u2212 reference.",
    ]
    return Table("released", "Released models: ours vs the paper and the release", notes, frame.reset_index())


def reproduction_table(col: Collection, paper: pd.DataFrame) -> Table:
    """One row per released model and metric: ours, the reference with its source, the tolerance, the verdict."""
    judged = V.verdict_frame(col, paper)
    return Table(
        "reproduction",
        "Reproduction verdicts: the released checkpoints against the paper and the release",
        [f"**{V.verdict_line(judged)}**", V.tolerance_note()],
        judged,
    )


def build_tables(col: Collection, tidy: pd.DataFrame, paper: pd.DataFrame) -> list[Table]:
    tables = [grid_table(col, tidy), cost_table(col, tidy)]
    if col.grid.name in ("released", "single_stage"):  # single_stage: our training of the released architectures
        tables[:0] = [reproduction_table(col, paper), released_table(col, tidy, paper)]
    return tables


def fmt(v) -> str:
    """A cell as text: blank for missing, yes/no, 4 significant digits (whole numbers from 10,000 on)."""
    if v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return str(v)


def to_markdown(table: Table) -> str:
    frame = table.frame
    numeric = [
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in frame.columns
    ]
    lines = [
        f"# {table.title}",
        "",
        *(f"> {n}\n>" for n in table.notes),
        "",
        "| " + " | ".join(frame.columns) + " |",
        "|" + "|".join("---:" if num else "---" for num in numeric) + "|",
    ]
    lines += [
        "| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def write_tables(tables: list[Table], tab_dir: Path) -> list[Path]:
    tab_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for t in tables:
        csv, md = tab_dir / f"{t.name}.csv", tab_dir / f"{t.name}.md"
        t.frame.to_csv(csv, index=False)
        md.write_text(to_markdown(t))
        written += [csv, md]
    return written
