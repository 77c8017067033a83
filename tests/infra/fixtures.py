"""pytest plugin: session-scoped real infrastructure (`slurm_cluster`, `mlflow_server`).

Loaded from tests/conftest.py (`pytest_plugins = ["tests.infra.fixtures"]`). Each fixture stops exactly what
it started, even when tests fail, and its teardown fails if any process it started is still alive.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.infra.apt import ensure, missing
from tests.infra.mlflow_server import MlflowServer
from tests.infra.slurm import SlurmCluster, alive

SLURM_PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
REPO = Path(__file__).resolve().parents[2]


def _require_slurm_packages() -> None:
    """Install what is missing as root; skip (with the reason) only where that is impossible."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("the real SLURM cluster needs a Debian system (dpkg/apt) with root access")
    if os.geteuid() != 0:
        # munged and MariaDB have to be started as their own users, which needs root
        todo = missing(SLURM_PACKAGES)
        reason = f"missing Debian packages {todo} and " if todo else ""
        pytest.skip(f"the real SLURM cluster needs root: {reason}not running as root")
    ensure(SLURM_PACKAGES)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM cluster with accounting; its client settings are in os.environ meanwhile.

    Jobs inherit the submitting environment (sbatch --export=ALL), so they see SLURM_CONF, the repo on
    PYTHONPATH (submitit pickles test-module callables by reference) and the venv's bin/ first on PATH;
    submitit itself runs the job with this process's sys.executable, i.e. the venv's python.
    """
    _require_slurm_packages()
    cluster = SlurmCluster()
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "PYTHONPATH", "PATH")}
    try:
        cluster.start()
        os.environ.update(cluster.env)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved["PYTHONPATH"]]))
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), saved["PATH"] or ""])
        yield cluster
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        cluster.stop()
    left = [p for p in cluster.started_pids if alive(p)]
    assert not left, f"SLURM daemons still alive after stop(): {left}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A running `mlflow server` in a session tmp dir: `.uri`, `.stop()`, `.start()`."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
    left = [p for p in server.started_pids if alive(p)]
    assert not left, f"mlflow server processes still alive after stop(): {left}"
