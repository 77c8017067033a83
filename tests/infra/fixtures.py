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
    from bench.launch import job_environment

    cluster = SlurmCluster()
    try:
        cluster.start()
        with job_environment(
            {
                **cluster.env,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            }
        ):
            yield cluster
    finally:
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


@pytest.fixture(scope="session")
def rehearsal_files(tmp_path_factory):
    """What a paper-path user has, with random weights (tests/infra/rehearsal.py): `.imagenet` (an ImageNet-layout
    tree of 4 classes with corrupt files), `.weights` (a cache with the shared networks, the teacher and the ADM
    batch; `.add(names)` writes released checkpoints into it) and `.env` (TITOK_BENCH_WEIGHTS). Removed at the end
    of the session: the released files take gigabytes."""
    from types import SimpleNamespace

    from tests.infra import rehearsal

    root = tmp_path_factory.mktemp("rehearsal")
    try:
        rehearsal.write_imagenet_tree(root / "imagenet")
        rehearsal.write_weights_cache(root / "weights", rehearsal.shared_names())
        yield SimpleNamespace(
            imagenet=root / "imagenet",
            weights=root / "weights",
            add=lambda names: rehearsal.write_weights_cache(root / "weights", list(names)),
            env={**os.environ, "TITOK_BENCH_WEIGHTS": str(root / "weights")},
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
