"""The runs: the driver records in each cell's folder what its run is; whoever first reaches the store creates it.

The cell's run id lives in its output folder (`RUN_ID_FILE`) so that a requeued job logs into the same run. When the
store does not answer as the driver declares a run, the record says what the run is (experiment, name, tags, parent)
and the first logger that reaches the store creates it, so a sweep starts and runs during an outage. Experiments are
created by name, never with `set_experiment` (concurrent calls race and lose runs into "Default").
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from bench.core.io import atomic_write_json
from bench.core.lock import file_lock

from .schema import TAG_GRID, experiment_name
from .store import OUTAGES, client, refused

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run.json"  # in a cell's folder: the cell's run (or what it is to be), reused by reruns and jobs
RUN_LOCK_FILE = ".mlflow_run.lock"  # beside it: one process at a time checks or creates the run


def ensure_experiment(uri: str, grid: str, artifact_root: str | os.PathLike | None = None) -> str:
    """The grid's experiment id, created by name when missing (by the driver, or by the first job that reaches
    the store after an outage; create-by-name never lands a run in "Default")."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment_name(grid))
    if exp is not None:
        return exp.experiment_id
    location = Path(artifact_root).resolve().as_uri() if artifact_root and uri.startswith("sqlite") else None
    try:
        return c.create_experiment(experiment_name(grid), artifact_location=location, tags={TAG_GRID: grid})
    except Exception:
        exp = c.get_experiment_by_name(experiment_name(grid))  # another process created it meanwhile
        if exp is None:
            raise
        return exp.experiment_id


def declare_run(
    uri: str,
    folder: str | os.PathLike,
    grid: str,
    name: str,
    tags: dict[str, str],
    parent: str | os.PathLike | None = None,
    artifact_root: str | os.PathLike | None = None,
) -> str | None:
    """The run of `folder` (`parent`: the folder of its parent run): the one recorded there, else a new one. What
    the run is (experiment, name, tags, parent) is recorded first, so that a store that does not answer now gets the
    run from the first logger that reaches it. Returns the run id, None while the store does not answer. Only the
    store's definite "no such run" replaces a recorded run (the store was reset or is another one): a transient
    error never duplicates a cell's run."""
    path = Path(folder) / RUN_ID_FILE
    with _run_lock(folder):
        old = json.loads(path.read_text()) if path.exists() else {}
        record = {
            "run_id": old.get("run_id"),
            "tracking_uri": uri,
            "grid": grid,
            "name": name,
            "tags": tags,
            "parent": str(parent) if parent else None,
            "artifact_root": str(artifact_root) if artifact_root else None,
        }
        if record["run_id"] and not OUTAGES.down(uri):
            try:
                client(uri).get_run(record["run_id"])
                OUTAGES.answered(uri)
            except Exception as err:
                if not refused(err):
                    OUTAGES.failed(uri)
                    log.warning(
                        "MLflow at %s does not answer (%s); keeping run %s", uri, type(err).__name__, record["run_id"]
                    )
                else:
                    log.warning(
                        "run %s recorded in %s is not in %s (%s); creating a new run", record["run_id"], path, uri, err
                    )
                    record["run_id"] = None
        if record != old:
            atomic_write_json(path, record)
        if record["run_id"] or OUTAGES.down(uri):
            return record["run_id"]
        try:
            return _create_run(uri, path, record)
        except Exception as err:
            if refused(err):
                raise
            OUTAGES.failed(uri)
            log.warning(
                "MLflow at %s does not answer (%s); run %r is created when it does", uri, type(err).__name__, name
            )
            return None


def resolve_run(uri: str, folder: str | os.PathLike) -> str:
    """The id of the run recorded in `folder`, creating the run (and its experiment and parent) if the driver
    could not. Raises what the store raises."""
    path = Path(folder) / RUN_ID_FILE
    with _run_lock(folder):
        record = json.loads(path.read_text())
        return record["run_id"] or _create_run(uri, path, record)


def _create_run(uri: str, path: Path, record: dict) -> str:
    exp_id = ensure_experiment(uri, record["grid"], record["artifact_root"])
    tags = dict(record["tags"])
    if record["parent"]:
        tags["mlflow.parentRunId"] = resolve_run(uri, record["parent"])
    run_id = client(uri).create_run(exp_id, run_name=record["name"], tags=tags).info.run_id
    atomic_write_json(path, dict(record, run_id=run_id))
    return run_id


def _run_lock(folder: str | os.PathLike):
    return file_lock(Path(folder) / RUN_LOCK_FILE)
