"""What a report is drawn from: the run kept for each cell of a grid, what was left out and why, and the tidy table
(one row per cell and metric) that figures and tables read; also whether a run's numbers may stand beside the paper's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from bench import tracking as T

from .grid import Grid, cell_size_and_tokens

PAPER_SAMPLES = 50_000  # the paper's FIDs use 50k images; fewer makes a number incomparable with it

TIDY_COLUMNS = [
    "grid",
    "cell",
    "model_size",
    "num_tokens",
    "metric",
    "value",
    "lo",
    "hi",
    "run_id",
    "smoke",
    "preset",
    "weights_random",
    "smoke_reason",
]  # lo, hi: the metric's 95% interval where logged
# (sample count, the metric family it stands behind): a family logged without its count is not trusted
SAMPLE_COUNTS = (("rfid_num_images", "rfid"), ("gfid_num_samples", "gfid"))
SMOKE_PRESETS = ("tiny",)  # presets whose runs are pipeline checks at toy scale (sweeps/preset/<name>.yaml smoke: true)


def smoke_reasons(tags: Mapping[str, str], metrics: Mapping[str, float]) -> list[str]:
    """Why a run's numbers must not be set beside the paper's (empty: comparable)."""
    reasons = []
    if tags.get(T.TAG_WEIGHTS_RANDOM, "").lower() == "true":
        reasons.append("random stand-in weights")
    if tags.get(T.TAG_PRESET) in SMOKE_PRESETS:
        reasons.append(f"{tags[T.TAG_PRESET]} preset")
    if tags.get(T.TAG_SMOKE, "").lower() == "true":
        reasons.append("tagged smoke")
    for count, family in SAMPLE_COUNTS:
        if count in metrics and metrics[count] < PAPER_SAMPLES:
            reasons.append(f"{count}={int(metrics[count])} < {PAPER_SAMPLES:,}")
        elif count not in metrics and family in metrics:
            reasons.append(f"{family} without {count}")
    return reasons


@dataclass(frozen=True)
class CellRun:
    """The run kept for one cell."""

    cell: str
    run_id: str
    model_size: str
    num_tokens: int | None
    metrics: dict[str, float]  # the final metrics of tracking.METRICS that the run logged
    tags: dict[str, str]
    params: dict[str, str]
    smoke_reasons: tuple[str, ...]
    fallback: str = ""  # why a run that is not titok.status=finished was kept ("" when it is)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> (lo, hi), where logged

    @property
    def smoke(self) -> bool:
        return bool(self.smoke_reasons)

    @property
    def smoke_reason(self) -> str:
        return "; ".join(self.smoke_reasons)

    @property
    def preset(self) -> str:
        return self.tags.get(T.TAG_PRESET, "")

    @property
    def weights_random(self) -> bool:
        return self.tags.get(T.TAG_WEIGHTS_RANDOM, "").lower() == "true"

    @classmethod
    def from_run(cls, run, fallback: str = "") -> CellRun:
        tags, metrics = dict(run.data.tags), {k: v for k, v in run.data.metrics.items() if k in T.METRICS}
        logged = run.data.metrics
        intervals = {
            m: (logged[lo], logged[hi])
            for m in T.INTERVAL_METRICS
            for lo, hi in [T.interval_keys(m)]
            if m in metrics and lo in logged and hi in logged
        }
        cell = tags[T.TAG_CELL]
        size, k = cell_size_and_tokens(cell)
        k_tag = tags.get(T.TAG_NUM_TOKENS)
        return cls(
            cell=cell,
            run_id=run.info.run_id,
            model_size=tags.get(T.TAG_MODEL_SIZE) or size or "",
            num_tokens=int(k_tag) if k_tag else k,
            metrics=metrics,
            tags=tags,
            params=dict(run.data.params),
            smoke_reasons=tuple(smoke_reasons(tags, metrics)),
            fallback=fallback,
            intervals=intervals,
        )


@dataclass(frozen=True)
class IgnoredRun:
    run_id: str
    cell: str
    reason: str


@dataclass
class Collection:
    """What a report is drawn from: the kept run per cell, what was left out and why, the sweep's settings."""

    grid: Grid
    tracking_uri: str
    experiment: str
    runs: dict[str, CellRun]  # cell -> kept run, in grid order
    missing: dict[str, str]  # cell -> why it has no kept run
    ignored: list[IgnoredRun]
    sweep_run_id: str | None = None
    sweep_settings: dict[str, str] = field(default_factory=dict)  # the parent run's params and titok.* tags

    @property
    def smoke(self) -> bool:
        return any(r.smoke for r in self.runs.values())

    @property
    def smoke_run(self) -> bool:
        """A pipeline check at toy scale, by what the runs record: the sweep's preset says `smoke: true` (the sweep
        run's param preset.smoke), or a kept cell ran a smoke preset. No scaling trend is expected of it."""
        return str(self.sweep_settings.get("preset.smoke", "")).lower() == "true" or any(
            r.preset in SMOKE_PRESETS for r in self.runs.values()
        )

    @property
    def smoke_reasons(self) -> list[str]:
        """The distinct reasons, over all kept runs, that make results smoke results."""
        return sorted({x for r in self.runs.values() for x in r.smoke_reasons})

    @property
    def fallbacks(self) -> dict[str, str]:
        return {c: r.fallback for c, r in self.runs.items() if r.fallback}

    def table(self) -> pd.DataFrame:
        """The tidy table: one row per kept cell and logged final metric (grid order, METRICS order)."""
        rows = [
            {
                "grid": self.grid.name,
                "cell": r.cell,
                "model_size": r.model_size,
                "num_tokens": r.num_tokens,
                "metric": m,
                "value": r.metrics[m],
                "lo": r.intervals.get(m, (None, None))[0],
                "hi": r.intervals.get(m, (None, None))[1],
                "run_id": r.run_id,
                "smoke": r.smoke,
                "preset": r.preset,
                "weights_random": r.weights_random,
                "smoke_reason": r.smoke_reason,
            }
            for r in self.runs.values()
            for m in T.METRICS
            if m in r.metrics
        ]
        return pd.DataFrame(rows, columns=TIDY_COLUMNS).astype({"num_tokens": "Int64", "lo": float, "hi": float})

    def common_params(self) -> dict[str, str]:
        """Params with one value across all kept cell runs (the settings the cells share)."""
        runs = list(self.runs.values())
        return {k: v for k, v in sorted(runs[0].params.items()) if all(r.params.get(k) == v for r in runs[1:])}

    def provenance(self, brief: bool = False) -> dict[str, str]:
        """What the numbers are: label -> each value with its number of cells (brief: the first five)."""
        facts = {}
        for label, read in list(_PROVENANCE.items())[: _BRIEF if brief else None]:
            counts = Counter(v for v in map(read, self.runs.values()) if v not in (None, ""))
            facts[label] = ", ".join(f"{v} ({n} cell{'s' * (n != 1)})" for v, n in counts.most_common()) or "not logged"
        return facts


def _count(v: float | None) -> str | None:
    return None if v is None else f"{int(v):,}"


# what a report states about its numbers: label -> what to read from a kept run (the first _BRIEF go on
# figures and table headings, all of them on the HTML page)
_PROVENANCE = {
    "preset": lambda r: r.preset,
    "gFID/IS samples (gfid_num_samples)": lambda r: _count(r.metrics.get("gfid_num_samples")),
    "rFID images (rfid_num_images)": lambda r: _count(r.metrics.get("rfid_num_images")),
    "FID distance": lambda r: r.tags.get(T.eval_tag("gfid", "distance")),
    "FID reference": lambda r: r.tags.get(T.TAG_REFERENCE),
    "stand-in (random) weights": lambda r: "yes" if r.weights_random else "no",
    "device": lambda r: r.tags.get(T.TAG_DEVICE),
    "code version": lambda r: r.tags.get(T.TAG_CODE_VERSION),
}
_BRIEF = 5
