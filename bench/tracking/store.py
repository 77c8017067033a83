"""Where the runs go and how this process talks to the store: the tracking URI, a client, what counts as an outage.

A dead server must cost a job little: clients fail fast (`JOB_HTTP_ENV`) and, after a call that got no answer,
nobody in this process calls that store again for a while (`OUTAGES`); the callers buffer meanwhile.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.core.lock import file_lock

SQLITE_PREFIX = "sqlite:///"  # an embedded store: a sqlite file, its path after the prefix
STORE_FILE = "mlflow.db"  # the embedded store's file in an outputs folder
DEFAULT_OUTPUTS = "outputs"  # the sweep's outputs folder when none is given, relative to the working directory
STORE_LOCK_SUFFIX = ".lock"  # mlflow.db.lock beside a sqlite store: one process at a time creates it


def store_uri(outputs: str | os.PathLike) -> str:
    """The URI of the embedded store in an outputs folder."""
    return f"{SQLITE_PREFIX}{Path(outputs) / STORE_FILE}"


DEFAULT_TRACKING_URI = store_uri(DEFAULT_OUTPUTS)  # sqlite:///outputs/mlflow.db, relative to the working directory

# Jobs must not block for minutes on a dead server (MLflow's default retries take ~4 min): fail fast and
# let RunLogger buffer and retry.
JOB_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def fail_fast() -> None:
    """JOB_HTTP_ENV for this process and what it starts (unless the user set them): every client made here."""
    for k, v in JOB_HTTP_ENV.items():
        os.environ.setdefault(k, v)


def resolve_uri(uri: str | None, outputs: str | os.PathLike | None = None) -> str:
    """config value, else $MLFLOW_TRACKING_URI, else a sqlite file in `outputs` (made absolute so that jobs
    running elsewhere find the same store)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if uri.startswith(SQLITE_PREFIX) and not uri.startswith(SQLITE_PREFIX + "/"):
            return SQLITE_PREFIX + str(Path(uri[len(SQLITE_PREFIX) :]).resolve())
        return uri
    folder = Path(outputs or DEFAULT_OUTPUTS).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return store_uri(folder)


def client(uri: str):
    """A client of the store at `uri`. Making one opens the store, which creates and migrates a sqlite file that is
    not there yet: two processes doing that at once (two sweeps on a fresh outputs folder) both migrate and one dies
    in alembic, so they take turns on a lock file beside it."""
    from mlflow import MlflowClient

    fail_fast()
    if not uri.startswith(SQLITE_PREFIX):
        return MlflowClient(tracking_uri=uri)
    with file_lock(uri[len(SQLITE_PREFIX) :] + STORE_LOCK_SUFFIX):
        return MlflowClient(tracking_uri=uri)


def refused(err: BaseException) -> bool:
    """The store answered and refused for good (4xx: no such run, a param logged before with another value):
    retrying cannot help. No answer, a 5xx, 429 or a locked sqlite file may pass later."""
    from mlflow.exceptions import MlflowException

    if not isinstance(err, MlflowException):
        return False
    status = err.get_http_status_code()
    return 400 <= status < 500 and status != 429


class _Outages:
    """Per store, in this process: after a call that got no answer nobody here calls the store again for a while
    (5 s, doubling up to 5 min, reset by an answer), so a dead server costs a training loop one failed request per
    window instead of seconds at every log call."""

    FIRST_S, MAX_S = 5.0, 300.0

    def __init__(self):
        self.until: dict[str, float] = {}
        self.wait: dict[str, float] = {}

    def down(self, uri: str) -> bool:
        return time.monotonic() < self.until.get(uri, 0.0)

    def failed(self, uri: str) -> None:
        self.wait[uri] = min(self.wait.get(uri, self.FIRST_S / 2) * 2, self.MAX_S)
        self.until[uri] = time.monotonic() + self.wait[uri]

    def answered(self, uri: str) -> None:
        self.until.pop(uri, None)
        self.wait.pop(uri, None)

    def retry_now(self, uri: str) -> None:
        """The next call tries (a flush); the window keeps growing if it fails again."""
        self.until.pop(uri, None)


OUTAGES = _Outages()
