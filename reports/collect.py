"""MLflow -> a Collection: the latest finished run of each cell of a grid, and the artifacts those runs logged.

Everything here follows the schema of `bench/tracking/` (the only package of bench/ that reports import).
"""

from __future__ import annotations

import os
import socket
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlparse

from bench import tracking as T

from .collection import CellRun, Collection, IgnoredRun
from .grid import Grid, ReportError


def resolve_tracking_uri(uri: str | None) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else the sweep's default store (relative to the working directory)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or T.DEFAULT_TRACKING_URI


def connect(uri: str):
    """An MlflowClient on `uri`, after checking the store is there (MLflow would silently create an empty
    sqlite file, and retries an unreachable server for minutes)."""
    from mlflow import MlflowClient

    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        path = uri[len(T.SQLITE_PREFIX) :].split("?")[0]
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
