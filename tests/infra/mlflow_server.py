"""A real `mlflow server` on 127.0.0.1 with a sqlite store and an artifacts directory in a given folder.

    with MlflowServer(tmp_path) as server:
        mlflow.set_tracking_uri(server.uri)
        ...
        server.stop()     # a tracking outage: the port and the store stay reserved for this instance
        server.start()    # same port, same store: what was logged before is still there

The server runs in its own session: `mlflow server` spawns a uvicorn child, and `stop()` signals the whole
process group, then waits until every member of it is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.infra.slurm import alive, free_ports

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never send loopback to a proxy


def _group_members(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


class MlflowServer:
    """`mlflow server --workers 1` with job execution off (2 processes, ~0.5 GB); healthy after ~5-12 s."""

    def __init__(self, directory: str | Path, port: int | None = None, start_timeout_s: float = 90):
        self.directory = Path(directory)
        self.port = port if port is not None else free_ports(1)[0]
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.started_pids: list[int] = []  # every process of every start, for leak checks
        self._pids: list[int] = []  # the processes of the current start

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "mlflow-server.log"

    def healthy(self) -> bool:
        try:
            with _NO_PROXY.open(self.uri + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def start(self) -> MlflowServer:
        if self.proc is not None:
            raise RuntimeError("mlflow server already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.healthy():
            raise RuntimeError(f"something else already answers on {self.uri}")
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.directory / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.directory / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        # without this the server starts a job runner (~10 processes, ~1.45 GB)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.directory,
                start_new_session=True,
            )
        self._pids = [self.proc.pid]
        self.started_pids.append(self.proc.pid)
        deadline = time.monotonic() + self.start_timeout_s
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"mlflow server on {self.uri} did not become healthy:\n{tail}")
            time.sleep(0.1)
        children = [p for p in _group_members(self.proc.pid) if p not in self._pids]  # the uvicorn worker
        self._pids += children
        self.started_pids += children
        return self

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the process group, SIGKILL what is left after `timeout`; waits until all are gone."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the server leads its own group
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and (self.proc.poll() is None or _group_members(pgid)):
                time.sleep(0.05)
            if self.proc.poll() is not None and not _group_members(pgid):
                break
        self.proc.wait(timeout=5)
        self.proc = None
        left = [p for p in self._pids if alive(p)]
        if left:
            raise RuntimeError(f"mlflow server processes survived SIGKILL: {left}")

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
