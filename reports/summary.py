"""The summary table at the top of a scaling report: did the run reproduce the shape of the paper's Figure 4?

Per model size: Spearman's rank correlation of K with rFID, PSNR and gFID; per K in GAP_TOKENS: the L-vs-S and
B-vs-S gaps in rFID and PSNR, and whether L > B > S (better reconstruction: lower rFID, higher PSNR). Each row has
its target (the shape of the paper's Figure 4) and pass/fail against it (blank: no target, or too few cells to tell);
a smoke run (Collection.smoke_run) reads NOT_EXPECTED instead: at toy scale the trend cannot show.

Intervals: a gap's is the two cells' 95% intervals combined as independent normals (half-width
sqrt(h1^2 + h2^2)); a Spearman's is the 2.5 / 97.5 percentiles of the correlation over SPEARMAN_DRAWS draws of
every cell's value from a normal with its interval's width (seed SPEARMAN_SEED). Blank where the cells logged no
intervals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.eval.metrics import spearman

from .collection import Collection
from .figures import SMOKE_RUN_LINE
from .tables import Table

GAP_TOKENS = (16, 32)
SPEARMAN_TARGETS = {
    "rfid": ("<= -0.8", lambda r: r <= -0.8),
    "psnr": (">= +0.8", lambda r: r >= 0.8),
    "gfid": ("", None),
}  # no gFID target: reported only
LOWER_IS_BETTER = {"rfid": True, "psnr": False}
LABEL = {"rfid": "rFID", "psnr": "PSNR", "gfid": "gFID"}
NOT_EXPECTED = "not expected at smoke scale"
SPEARMAN_DRAWS = 1000
SPEARMAN_SEED = 0
Z95 = 1.959964


def _cells(tidy: pd.DataFrame, metric: str, size: str) -> pd.DataFrame:
    rows = tidy[(tidy["metric"] == metric) & (tidy["model_size"] == size)]
    return rows.set_index("num_tokens")[["value", "lo", "hi"]].sort_index()


def _sd(rows: pd.DataFrame) -> pd.Series:
    return (rows["hi"] - rows["lo"]) / (2 * Z95)


def _spearman_interval(rows: pd.DataFrame) -> tuple[float, float]:
    sd = _sd(rows)
    if sd.isna().any() or len(rows) < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(SPEARMAN_SEED)
    draws = rows["value"].to_numpy()[None] + rng.standard_normal((SPEARMAN_DRAWS, len(rows))) * sd.to_numpy()[None]
    ks = rows.index.to_numpy(dtype=float)
    rhos = np.array([spearman(ks, d) for d in draws])
    rhos = rhos[np.isfinite(rhos)]
    if not rhos.size:
        return float("nan"), float("nan")
    lo, hi = np.quantile(rhos, [0.025, 0.975])
    return float(lo), float(hi)


def summary_frame(col: Collection, tidy: pd.DataFrame) -> pd.DataFrame:
    def _verdict(ok, targeted: bool = True) -> str:
        if col.smoke_run and targeted:  # also where too few cells tell: no trend is expected either way
            return NOT_EXPECTED
        return "" if ok is None else ("pass" if ok else "fail")

    sizes = [s for s in ("S", "B", "L") if s in set(tidy["model_size"])]
    rows = []
    for metric, (target, check) in SPEARMAN_TARGETS.items():
        for size in sizes:
            cells = _cells(tidy, metric, size)
            rho = spearman(cells.index.to_numpy(dtype=float), cells["value"]) if len(cells) else float("nan")
            lo, hi = _spearman_interval(cells) if len(cells) else (float("nan"), float("nan"))
            ok = None if check is None or np.isnan(rho) else bool(check(rho))
            rows.append(
                {
                    "check": f"Spearman(K, {LABEL[metric]})",
                    "size": size,
                    "K": "all",
                    "cells": len(cells),
                    "value": rho,
                    "lo": lo,
                    "hi": hi,
                    "target": target,
                    "result": _verdict(ok, check is not None),
                }
            )
    for metric, lower in LOWER_IS_BETTER.items():
        for k in GAP_TOKENS:
            at = {s: _cells(tidy, metric, s) for s in sizes}
            at = {s: c.loc[k] for s, c in at.items() if k in c.index}
            better = "<" if lower else ">"
            for big in ("L", "B"):
                if big not in at or "S" not in at:
                    continue
                gap = at[big]["value"] - at["S"]["value"]
                half = Z95 * np.hypot(*(((at[s]["hi"] - at[s]["lo"]) / (2 * Z95)) for s in (big, "S")))
                ok = gap < 0 if lower else gap > 0
                rows.append(
                    {
                        "check": f"{LABEL[metric]} gap {big} - S",
                        "size": f"{big}-S",
                        "K": str(k),
                        "cells": 2,
                        "value": gap,
                        "lo": gap - half,
                        "hi": gap + half,
                        "target": f"{better} 0",
                        "result": _verdict(bool(ok)),
                    }
                )
            order = [at[s]["value"] if s in at else np.nan for s in ("L", "B", "S")]
            ok = None
            if not np.isnan(order).any():
                ok = bool(order[0] < order[1] < order[2]) if lower else bool(order[0] > order[1] > order[2])
            rows.append(
                {
                    "check": f"{LABEL[metric]}: L better than B better than S",
                    "size": "L,B,S",
                    "K": str(k),
                    "cells": int(np.sum(~np.isnan(order))),
                    "value": np.nan,
                    "lo": np.nan,
                    "hi": np.nan,
                    "target": f"L {better} B {better} S",
                    "result": _verdict(ok),
                }
            )
    frame = pd.DataFrame(rows, columns=["check", "size", "K", "cells", "value", "lo", "hi", "target", "result"])
    frame["smoke"] = col.smoke
    return frame


def summary_table(col: Collection, tidy: pd.DataFrame) -> Table:
    notes = [
        "Targets (the shape of the paper's Figure 4): per size Spearman(K, rFID) "
        "<= -0.8 and Spearman(K, PSNR) >= +0.8; at K = 16 and 32, L reconstructs better than B and B better "
        "than S. lo / hi: 95% intervals (gaps: the cells' intervals combined; Spearman: the cells' values "
        "redrawn within their intervals); blank where the cells logged none."
    ]
    if col.smoke:
        notes.insert(0, "**SMOKE RESULTS**: these checks describe this run's shape only, never the paper's numbers.")
    if col.smoke_run:
        notes.insert(1, f'{SMOKE_RUN_LINE}: each check with a target reads "{NOT_EXPECTED}".')
    return Table(
        "summary",
        f"Grid {col.grid.name}: does the run show the paper's scaling shape?",
        notes,
        summary_frame(col, tidy),
    )
