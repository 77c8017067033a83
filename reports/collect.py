"""MLflow -> a tidy pandas table: the latest finished run of each cell of a grid, one row per cell and metric.

Everything here follows the schema in `bench/tracking.py` (the only module of bench/ that reports import).
The paper's published numbers (reports/paper_numbers.csv) are loaded here too, in the same tidy shape, so
that figures and tables can put them beside ours.
"""

from __future__ import annotations

import os
import re
import socket
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from bench import tracking as T

REPO_ROOT = Path(__file__).resolve().parents[1]
GRID_DIR = REPO_ROOT / "sweeps" / "grid"
PAPER_CSV = Path(__file__).with_name("paper_numbers.csv")
# the sweep's embedded store, relative to the working directory (the repo root for `python -m ...`)
DEFAULT_TRACKING_URI = "sqlite:///outputs/mlflow.db"
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
# which rows of paper_numbers.csv (its `table` column) describe which grid; other grids have no paper values
# (single_stage trains the released single-stage architectures: the release's numbers are its references)
PAPER_TABLE_OF_GRID = {"latent_vs_size": "scaling", "released": "released", "single_stage": "released"}
# paper_numbers.csv column -> our metric name
PAPER_METRICS = {"rfid": "rfid", "gfid": "gfid", "is": "gfid_is", "samples_per_s": "samples_per_s"}
# (sample count, the metric family it stands behind): a family logged without its count is not trusted
SAMPLE_COUNTS = (("rfid_num_images", "rfid"), ("gfid_num_samples", "gfid"))
SMOKE_PRESETS = ("tiny",)  # presets whose runs are pipeline checks at toy scale (sweeps/preset/<name>.yaml smoke: true)

_CELL_NAME = re.compile(r"^(?:TA-)?TiTok-([SBL])[SBL]?-(\d+)")


class ReportError(Exception):
    """A problem the user can fix (unknown grid, no runs, unreachable store), said in one line."""


# ---- the grid ------------------------------------------------------------------------------------------
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


# ---- the store -----------------------------------------------------------------------------------------
def resolve_tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def connect(uri: str):
    """An MlflowClient on `uri`, after checking the store is there (MLflow would silently create an empty
    sqlite file, and retries an unreachable server for minutes)."""
    from mlflow import MlflowClient

    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        path = uri[len("sqlite:///") :].split("?")[0]
        if path != ":memory:" and not Path(path).is_file():
            raise ReportError(
                f"no MLflow store at {uri} ({path} does not exist): run the sweep first, "
                f"or pass tracking_uri=... (or set MLFLOW_TRACKING_URI)"
            )
    elif scheme in ("http", "https"):
        parsed = urlparse(uri)
        port = parsed.port or (443 if scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=5).close()
        except OSError as e:
            raise ReportError(
                f"cannot reach the MLflow server at {uri} ({e.strerror or e}): start it or pass tracking_uri=..."
            ) from None
    client = MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as e:  # any store failure (old schema, auth, bad URI) becomes one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReportError(f"cannot read the MLflow store at {uri}: {first}") from None
    return client


def _search_all(client, experiment_id: str, role: str) -> list:
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{T.TAG_ROLE}` = '{role}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _newest_first(runs: list) -> list:
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.end_time or 0), reverse=True)


# ---- runs ----------------------------------------------------------------------------------------------
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


def _select(grid: Grid, runs: list) -> tuple[dict[str, CellRun], dict[str, str], list[IgnoredRun]]:
    """Keep the newest run per cell that MLflow and the stage chain both call finished; else the newest
    run MLflow calls FINISHED (flagged as a fallback); list every other run with the reason."""
    by_cell, ignored = defaultdict(list), []
    for run in runs:
        cell = run.data.tags.get(T.TAG_CELL, "")
        run_grid = run.data.tags.get(T.TAG_GRID, grid.name)
        if run_grid != grid.name:
            ignored.append(IgnoredRun(run.info.run_id, cell, f"tagged grid '{run_grid}', not '{grid.name}'"))
        elif cell not in grid.cells:
            ignored.append(IgnoredRun(run.info.run_id, cell or "?", "cell not in the grid definition"))
        else:
            by_cell[cell].append(run)
    kept, missing = {}, {}
    for cell in grid.cells:
        candidates = _newest_first(by_cell.get(cell, []))
        finished = [r for r in candidates if r.info.status == "FINISHED"]
        complete = [r for r in finished if r.data.tags.get(T.TAG_STATUS) == "finished"]
        chosen = (complete or finished or [None])[0]
        for r in candidates:
            if r is chosen:
                continue
            status = f"MLflow {r.info.status}, titok.status {r.data.tags.get(T.TAG_STATUS, 'unset')}"
            reason = f"superseded by {chosen.info.run_id}" if r in complete else f"not finished ({status})"
            ignored.append(IgnoredRun(r.info.run_id, cell, reason))
        if chosen is None:
            missing[cell] = f"no finished run ({len(candidates)} not finished)" if candidates else "no run"
            continue
        fallback = (
            ""
            if complete
            else (
                f"no run with titok.status=finished; kept the newest FINISHED run "
                f"(titok.status {chosen.data.tags.get(T.TAG_STATUS, 'unset')})"
            )
        )
        kept[cell] = CellRun.from_run(chosen, fallback)
    return kept, missing, ignored


def collect(grid: Grid, tracking_uri: str | None = None) -> Collection:
    """Read a grid's runs from MLflow. ReportError when the store is unreachable or holds no cell runs."""
    uri = resolve_tracking_uri(tracking_uri)
    client = connect(uri)
    experiment = T.experiment_name(grid.name)
    exp = client.get_experiment_by_name(experiment)
    hint = f"run `python -m bench.sweep grid={grid.name}` first, or point tracking_uri at the sweep's store"
    if exp is None:
        raise ReportError(f"grid '{grid.name}' has no runs: no experiment '{experiment}' in {uri}; {hint}")
    cell_runs = _search_all(client, exp.experiment_id, "cell")
    if not cell_runs:
        raise ReportError(
            f"grid '{grid.name}' has no runs: experiment '{experiment}' in {uri} holds no cell runs; {hint}"
        )
    kept, missing, ignored = _select(grid, cell_runs)
    if not kept:
        raise ReportError(
            f"grid '{grid.name}' has no finished cell runs in '{experiment}' at {uri} "
            f"({len(cell_runs)} cell runs, none a finished run of a cell of this grid)"
        )
    sweeps = _newest_first(_search_all(client, exp.experiment_id, "sweep"))
    settings = {}
    if sweeps:
        parent = sweeps[0]
        settings = {
            **dict(sorted(parent.data.params.items())),
            **{k: v for k, v in sorted(parent.data.tags.items()) if k.startswith("titok.")},
        }
    return Collection(
        grid=grid,
        tracking_uri=uri,
        experiment=experiment,
        runs=kept,
        missing=missing,
        ignored=ignored,
        sweep_run_id=sweeps[0].info.run_id if sweeps else None,
        sweep_settings=settings,
    )


# ---- artifacts ---------------------------------------------------------------------------------------------
# what the report shows beside the metrics: eval_recon's files (bench/stages/eval_recon.py), logged under the
# stage's name in each cell run
ARTIFACTS = {"gallery": "eval_recon/gallery.png", "token_usage": "eval_recon/token_usage.json"}


def fetch_artifacts(col: Collection, dest: Path) -> dict[str, dict[str, Path]]:
    """cell -> {kind: local file} for the ARTIFACTS each kept run logged, downloaded under `dest`; a run without
    them (older code, a stage not in the grid, a store that lost them) has none."""
    from mlflow import MlflowClient

    client, found = MlflowClient(tracking_uri=col.tracking_uri), {}
    quiet = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one bar per file otherwise
    try:
        for cell, run in col.runs.items():
            try:
                logged = {
                    f.path
                    for folder in {p.rsplit("/", 1)[0] for p in ARTIFACTS.values()}
                    for f in client.list_artifacts(run.run_id, folder)
                }
            except Exception:  # no artifact store for this run, or not readable: the report says they are absent
                continue
            for kind, path in ARTIFACTS.items():
                if path not in logged:
                    continue
                target = dest / cell
                target.mkdir(parents=True, exist_ok=True)
                try:
                    local = Path(client.download_artifacts(run.run_id, path, str(target)))
                except Exception:
                    continue
                if local.is_file():
                    found.setdefault(cell, {})[kind] = local
    finally:
        if quiet is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = quiet
    return found


# ---- the paper -----------------------------------------------------------------------------------------
def paper_numbers(grid: Grid) -> pd.DataFrame:
    """The paper's values for this grid's cells, tidy: cell, model_size, num_tokens, metric, value, source."""
    columns = ["cell", "model_size", "num_tokens", "metric", "value", "source"]
    table = PAPER_TABLE_OF_GRID.get(grid.name)
    if table is None:
        return pd.DataFrame(columns=columns)
    raw = pd.read_csv(PAPER_CSV, comment="#")
    raw = raw[raw["table"] == table]
    rows = []
    for rec in raw.to_dict("records"):
        # scaling rows name the size only ("TiTok-S"); the cell is the grid's TiTok-{size}-{K}
        cell = f"{rec['model']}-{int(rec['tokens'])}" if table == "scaling" else rec["model"]
        if cell not in grid.cells:
            continue
        size, k = cell_size_and_tokens(cell)
        rows += [
            {
                "cell": cell,
                "model_size": size,
                "num_tokens": k,
                "metric": ours,
                "value": float(rec[col]),
                "source": rec["source"],
            }
            for col, ours in PAPER_METRICS.items()
            if pd.notna(rec[col])
        ]
    return pd.DataFrame(rows, columns=columns)
