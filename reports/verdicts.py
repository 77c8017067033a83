"""Reproduction verdicts for grid `released`: each released checkpoint's logged numbers against the reference
numbers (the paper's and the official release's, reports/paper_numbers.csv, each with its source) within a stated
tolerance per metric.

Per model and metric one verdict: `pass` (|ours - reference| <= tolerance), `fail`, `no reference` (neither the
paper nor the release gives the number, or it is not comparable, e.g. a speed measured on another device),
`not logged`, or a reason the run is never compared (random stand-in weights, fewer than 50,000 images, ...).
A run with random stand-in weights never passes. One line sums the grid up (`verdict_line`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .collection import Collection

RANDOM_WEIGHTS = "random stand-in weights"


@dataclass(frozen=True)
class Tolerance:
    label: str
    absolute: float | None = None  # |ours - reference| at most this
    relative: float | None = None  # or at most this share of the reference
    device: str | None = None  # the reference holds only on this device (a substring of the run's titok.device)

    def width(self, reference: float) -> float:
        return self.absolute if self.absolute is not None else self.relative * abs(reference)

    def text(self) -> str:
        band = f"\u00b1{self.absolute:g}" if self.absolute is not None else f"\u00b1{self.relative:.0%}"
        return band + (f" (on {self.device})" if self.device else "")


# the metrics judged, in order; FIDs in absolute units, IS and speed relative to the reference
TOLERANCES = {
    "rfid": Tolerance("rFID", absolute=0.10),
    "gfid": Tolerance("gFID", absolute=0.15),
    "gfid_is": Tolerance("IS", relative=0.05),
    "samples_per_s": Tolerance("samples/s", relative=0.20, device="A100"),  # the paper times one A100
}
# paper_numbers.csv `source` keys -> the public source they stand for
SOURCES = {
    "readme": "the official repository's README",
    "abstract": "the paper's abstract (arXiv 2406.07550)",
    "appendix-2nd": "the paper's appendix table, as quoted by later papers' comparison tables",
    "fig2": "the paper's Figure 2 (speed-up over DiT-XL/2 read off the plot: approximate)",
}
# which of a row's sources gives each metric, first match wins
METRIC_SOURCES = {
    "rfid": ("readme", "abstract", "appendix-2nd"),
    "gfid": ("readme", "abstract", "appendix-2nd"),
    "gfid_is": ("appendix-2nd", "readme"),
    "samples_per_s": ("fig2", "appendix-2nd"),
}
COLUMNS = ["cell", "metric", "ours", "reference", "source", "tolerance", "diff", "verdict"]


def metric_source(metric: str, sources: str) -> str:
    """The public source of one metric's reference, from a paper_numbers.csv row's `source` list."""
    keys = [s.strip() for s in str(sources).split(";")]
    for key in METRIC_SOURCES[metric]:
        if key in keys:
            return SOURCES[key]
    return ", ".join(SOURCES.get(k, k) for k in keys)


def judge(ours: float, reference: float, tol: Tolerance) -> tuple[float, str]:
    """(ours - reference, "pass" | "fail"); the difference rounded to 1e-9 so that a value on the edge passes."""
    diff = round(ours - reference, 9)
    return diff, "pass" if abs(diff) <= tol.width(reference) + 1e-12 else "fail"


def verdict_frame(col: Collection, paper: pd.DataFrame) -> pd.DataFrame:
    """One row per released model and judged metric: ours, the reference and its source, the tolerance, ours minus
    the reference and the verdict."""
    refs = {(r.cell, r.metric): (r.value, r.source) for r in paper.itertuples()}
    rows = []
    for cell in col.grid.cells:
        run = col.runs.get(cell)
        for metric, tol in TOLERANCES.items():
            ref, source = refs.get((cell, metric), (float("nan"), ""))
            ours = run.metrics.get(metric, float("nan")) if run is not None else float("nan")
            row = {
                "cell": cell,
                "metric": tol.label,
                "ours": ours,
                "reference": ref,
                "source": metric_source(metric, source) if source else "",
                "tolerance": tol.text(),
                "diff": float("nan"),
            }
            if pd.isna(ref):
                row["verdict"] = "no reference"
            elif run is None:
                row["verdict"] = "no run"
            elif pd.isna(ours):
                row["verdict"] = "not logged"
            elif run.weights_random:
                row["diff"], row["verdict"] = round(ours - ref, 9), f"no pass: {RANDOM_WEIGHTS}"
            elif run.smoke:
                row["diff"], row["verdict"] = round(ours - ref, 9), f"not comparable: {run.smoke_reason}"
            elif tol.device and tol.device.lower() not in run.tags.get("titok.device", "").lower():
                row["verdict"] = f"no reference (measured on {tol.device})"
            else:
                row["diff"], row["verdict"] = judge(ours, ref, tol)
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def model_verdicts(frame: pd.DataFrame) -> dict[str, str]:
    """cell -> pass | fail | no pass: random stand-in weights | not comparable | no run | no reference."""
    out = {}
    for cell, rows in frame.groupby("cell", sort=False):
        verdicts = list(rows["verdict"])
        if "no run" in verdicts:
            out[cell] = "no run"
        elif any(v.startswith("no pass") for v in verdicts):
            out[cell] = f"no pass: {RANDOM_WEIGHTS}"
        elif any(v.startswith("not comparable") for v in verdicts):
            out[cell] = "not comparable"
        elif "fail" in verdicts:
            out[cell] = "fail"
        elif "pass" in verdicts:
            out[cell] = "pass"
        else:
            out[cell] = "no reference"
    return out


def verdict_line(frame: pd.DataFrame) -> str:
    """One line: reproduced or not, and which models fail on which metric."""
    models = model_verdicts(frame)
    n = len(models)
    passed = [c for c, v in models.items() if v == "pass"]
    failed = [c for c, v in models.items() if v == "fail"]
    fails = []
    for cell in failed:
        bad = frame[(frame["cell"] == cell) & (frame["verdict"] == "fail")]
        fails.append(f"{cell} ({', '.join(bad['metric'])})")
    others = {}
    for v in models.values():
        if v not in ("pass", "fail"):
            others[v] = others.get(v, 0) + 1
    rest = "; ".join(f"{k}: {v}" for k, v in others.items())
    head = "REPRODUCED" if len(passed) == n else "NOT REPRODUCED"
    line = f"{head}: {len(passed)} of {n} released models within tolerance on every metric with a reference"
    if fails:
        line += f"; fail: {', '.join(fails)}"
    return line + (f"; {rest}" if rest else "")


def tolerance_note() -> str:
    return (
        "Tolerances: "
        + ", ".join(f"{t.label} {t.text()}" for t in TOLERANCES.values())
        + ". A run with random stand-in weights never passes; one with fewer than 50,000 images is not compared."
    )
