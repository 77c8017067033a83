"""The throughput benchmark's output: the printed table, CSV and JSON of its rows."""

from __future__ import annotations

import csv
import json

import torch

COLUMNS = (
    ("section", "section", "{}"),
    ("task", "task", "{}"),
    ("model", "model", "{}"),
    ("mode", "mode", "{}"),
    ("path", "ran", "{}"),
    ("batch", "B", "{}"),
    ("throughput", "items/s", "{:.3g}"),
    ("unit", "unit", "{}"),
    ("median_s", "median s", "{:.3g}"),
    ("iqr_s", "IQR s", "{:.2g}"),
    ("min_s", "min s", "{:.3g}"),
    ("max_s", "max s", "{:.3g}"),
    ("gflop_per_item", "GFLOP/item", "{:.4g}"),
    ("achieved_gflops", "GFLOP/s", "{:.4g}"),
    ("peak_pct", "% peak", "{:.0f}"),
    ("flops_x", "FLOPs x K0", "{:.2f}"),
    ("time_x", "time x K0", "{:.2f}"),
    ("speedup", "x parity", "{:.2f}"),
    ("quality", "quality vs parity", "{}"),
)


def format_table(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(c[0] in r and r[c[0]] is not None for r in rows)]
    cells = [[c[1] for c in cols]]
    for r in rows:
        cells.append([c[2].format(r[c[0]]) if r.get(c[0]) is not None else "" for c in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _plain(rows: list[dict]) -> list[dict]:
    """Rows without tensors (for CSV/JSON)."""
    return [{k: v for k, v in r.items() if not isinstance(v, torch.Tensor)} for r in rows]


def write_csv(rows: list[dict], path: str) -> None:
    rows = _plain(rows)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_json(rows: list[dict], header: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump({"environment": header, "rows": _plain(rows)}, f, indent=1, default=str)
