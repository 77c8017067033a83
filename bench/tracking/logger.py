"""The jobs' side: log into a cell's run without ever failing the job, and without losing anything.

What the store does not take when it is made is appended to the cell folder's buffer (`BUFFER_FILE`) and replayed,
in order, once the store answers; `pending` says whether a folder still holds some.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from bench.core.io import atomic_write_json
from bench.core.lock import file_lock

from .runs import resolve_run
from .store import OUTAGES, client, refused

log = logging.getLogger(__name__)

BUFFER_FILE = "mlflow_buffer.jsonl"  # in a cell's folder: append-only, what could not be logged when it was made
ACKED_FILE = "mlflow_buffer.acked.json"  # beside it: how many bytes of the buffer the store has taken


class RunLogger:
    """Logs metrics, params, tags and artifacts into the run recorded in `folder`. A call the store does not answer
    is appended (fsynced) to the folder's buffer, and the buffer is replayed, in order, before the next call that
    reaches the store and at `flush()`. The buffer is append-only: what the store has taken is counted in a
    separate file written atomically, a line torn by a killed writer is skipped with a warning, and an entry the
    store refuses for good is dropped with a warning (it cannot hold back what follows). Nothing here raises into
    the training job."""

    def __init__(self, uri: str, folder: str | os.PathLike):
        self.uri, self.folder = uri, Path(folder)
        self.buffer, self.acked = self.folder / BUFFER_FILE, self.folder / ACKED_FILE
        self._client = client(uri)
        self._run_id: str | None = None

    # public API
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        ts = int(time.time() * 1000)
        self._do({"op": "metrics", "metrics": {k: float(v) for k, v in metrics.items()}, "step": step or 0, "ts": ts})

    def log_params(self, params: dict[str, object]) -> None:
        self._do({"op": "params", "params": {k: str(v)[:6000] for k, v in params.items()}})

    def set_tags(self, tags: dict[str, object]) -> None:
        self._do({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def delete_tags(self, keys: tuple[str, ...]) -> None:
        self._do({"op": "untag", "keys": list(keys)})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._do({"op": "artifact", "path": str(path), "artifact_path": artifact_path})

    def set_status(self, status: str) -> None:
        """ "RUNNING", "FINISHED" or "FAILED"."""
        self._do({"op": "status", "status": status})

    def flush(self) -> bool:
        """Replay the buffer now; True when nothing is left in it."""
        OUTAGES.retry_now(self.uri)
        with file_lock(self.buffer) as f:
            return self._replay(f)

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            self._run_id = resolve_run(self.uri, self.folder)
        return self._run_id

    # internals
    def _apply(self, entry: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        c, op, run_id = self._client, entry["op"], self.run_id
        if op == "metrics":
            c.log_batch(
                run_id,
                metrics=[Metric(k, v, entry["ts"], entry["step"]) for k, v in entry["metrics"].items()],
                synchronous=True,
            )
        elif op == "params":
            existing = c.get_run(run_id).data.params
            new = {k: v for k, v in entry["params"].items() if k not in existing}  # params are write-once
            if new:
                c.log_batch(run_id, params=[Param(k, v) for k, v in new.items()], synchronous=True)
        elif op == "tags":
            c.log_batch(run_id, tags=[RunTag(k, v) for k, v in entry["tags"].items()], synchronous=True)
        elif op == "untag":
            existing = c.get_run(run_id).data.tags
            for key in entry["keys"]:
                if key in existing:
                    c.delete_tag(run_id, key)
        elif op == "artifact":
            if Path(entry["path"]).exists():
                c.log_artifact(run_id, entry["path"], entry["artifact_path"])
        elif op == "status":
            if entry["status"] == "RUNNING":
                c.update_run(run_id, status="RUNNING")
            else:
                c.set_terminated(run_id, status=entry["status"])

    def _send(self, entry: dict) -> bool:
        """True when the store took the entry or refused it for good; False when it did not answer."""
        if OUTAGES.down(self.uri):
            return False
        try:
            self._apply(entry)
        except Exception as err:  # any store failure: buffer, or drop what the store refuses
            if not refused(err):
                OUTAGES.failed(self.uri)
                log.warning("MLflow unavailable (%s: %s); buffering to %s", type(err).__name__, err, self.buffer)
                return False
            log.warning("MLflow refused a %r entry for %s (%s); dropped", entry["op"], self.folder, err)
        OUTAGES.answered(self.uri)
        return True

    def _do(self, entry: dict) -> None:
        with file_lock(self.buffer) as f:
            if not (self._replay(f) and self._send(entry)):
                f.write(json.dumps(entry).encode() + b"\n")  # append mode: always at the end
                f.flush()
                os.fsync(f.fileno())

    def _replay(self, f) -> bool:
        """Send the buffer's entries past the acknowledged offset, in order, acknowledging each; True when none is
        left."""
        offset = self._acked_offset(f)
        f.seek(offset)
        for line in f.read().splitlines(keepends=True):
            try:
                entry = json.loads(line)
            except ValueError:  # torn by a killed writer (terminated by _acked_offset)
                log.warning("%s: skipping a torn entry at byte %d: %r", self.buffer, offset, line[:80])
            else:
                if not self._send(entry):
                    return False
            offset += len(line)
            atomic_write_json(self.acked, {"offset": offset})
        return True

    def _acked_offset(self, f) -> int:
        """Where the unsent entries start; a torn last line (a writer killed mid-line) is terminated first, so it
        is skipped as one bad line and nothing appended after it joins it."""
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")
                f.flush()
                size += 1
        offset = json.loads(self.acked.read_text())["offset"] if self.acked.exists() else 0
        return offset if offset <= size else 0  # a buffer replaced by hand starts over


def pending(folder: str | os.PathLike) -> bool:
    """Whether the buffer in `folder` holds entries the store has not taken."""
    buffer, acked = Path(folder) / BUFFER_FILE, Path(folder) / ACKED_FILE
    size = buffer.stat().st_size if buffer.exists() else 0
    return size > (json.loads(acked.read_text())["offset"] if acked.exists() else 0)
