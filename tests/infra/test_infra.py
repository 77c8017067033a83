"""The real infrastructure works end to end: submitit's SLURM executor on the single-node cluster (results,
arrays, dependencies, cancellation, preemption + requeue) and the mlflow server surviving a restart.

The callables below run inside SLURM jobs: submitit pickles them by reference, so this module must stay cheap
to import (no mlflow/torch at the top).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import submitit

from tests.infra.slurm import SlurmCluster, alive


def job_info(x: int) -> dict:
    return {"value": x * 7, "python": sys.executable, "job_id": os.environ.get("SLURM_JOB_ID")}


def square(x: int) -> int:
    return x * x


def stamp(path: str, seconds: float) -> tuple[float, float]:
    """Sleep, then return (start, end) wall times; the file marks that the job has started."""
    start = time.time()
    Path(path).write_text(str(start))
    time.sleep(seconds)
    return start, time.time()


class Resumable:
    """Counts to `steps`, saving progress after each step; a requeued run resumes from the saved progress.

    `checkpoint()` is what submitit calls on the preemption signal (USR2): it returns the submission to rerun
    after the requeue. Progress lives in a file, so a plain SLURM requeue (no checkpoint call) resumes too.
    """

    def __init__(self, progress: str, steps: int, step_s: float = 0.3):
        self.progress, self.steps, self.step_s = Path(progress), steps, step_s

    def __call__(self) -> dict:
        done = int(self.progress.read_text()) if self.progress.exists() else 0
        with open(f"{self.progress}.starts", "a") as f:
            f.write(f"{done}\n")
        for i in range(done, self.steps):
            time.sleep(self.step_s)
            tmp = self.progress.with_suffix(".tmp")
            tmp.write_text(str(i + 1))
            tmp.replace(self.progress)  # atomic: the job may be SIGKILLed at any moment
        starts = [int(s) for s in Path(f"{self.progress}.starts").read_text().split()]
        return {"count": self.steps, "starts": starts, "restarts": os.environ.get("SLURM_RESTART_COUNT")}

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(self)


def _executor(folder: Path, cluster: SlurmCluster, **params) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(slurm_partition=cluster.partition, timeout_min=30, cpus_per_task=1, mem_gb=1, **params)
    return ex


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def _result_within(job: submitit.Job, timeout: float):
    """job.result() in a daemon thread: returns (result, exception), fails the test if it hangs."""
    out: dict = {}

    def target():
        try:
            out["result"] = job.result()
        except Exception as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"job.result() of {job.job_id} still blocked after {timeout} s"
    return out.get("result"), out.get("error")


@pytest.mark.slurm
def test_submit_runs_in_the_venv(slurm_cluster, tmp_path):
    job = _executor(tmp_path, slurm_cluster).submit(job_info, 6)
    result = job.result()
    assert result == {"value": 42, "python": sys.executable, "job_id": job.job_id}
    # the result file can appear before slurmdbd has the final state: poll accounting like submitit does
    _wait_for(lambda: job.watcher.get_state(job.job_id, mode="force") == "COMPLETED", 10, "sacct COMPLETED")


@pytest.mark.slurm
def test_array(slurm_cluster, tmp_path):
    jobs = _executor(tmp_path, slurm_cluster).map_array(square, [1, 2, 3])
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1  # one SLURM array
    assert [j.result() for j in jobs] == [1, 4, 9]


@pytest.mark.slurm
def test_afterok_dependency(slurm_cluster, tmp_path):
    first = _executor(tmp_path, slurm_cluster).submit(stamp, str(tmp_path / "first"), 1.5)
    second = _executor(
        tmp_path, slurm_cluster, slurm_additional_parameters={"dependency": f"afterok:{first.job_id}"}
    ).submit(stamp, str(tmp_path / "second"), 0)

    def reason() -> str:
        return slurm_cluster.run("squeue", "-h", "-j", second.job_id, "-o", "%r").stdout.strip()

    _wait_for(lambda: reason() == "Dependency", 1, "the second job to wait on its dependency")
    (_, first_end), (second_start, _) = first.result(), second.result()
    assert second_start >= first_end


@pytest.mark.slurm
def test_sweep_sees_each_pending_array_element(slurm_cluster, tmp_path):
    """bench.launch.slurm_states: squeue folds pending array elements into one "N_[0-2]" line unless asked
    not to; the sweep must see every element, or a rerun would submit waiting stages again."""
    from bench.launch import slurm_states

    blocker = _executor(tmp_path, slurm_cluster).submit(stamp, str(tmp_path / "blocker"), 600)
    waiting = _executor(
        tmp_path, slurm_cluster, slurm_additional_parameters={"dependency": f"afterok:{blocker.job_id}"}
    ).map_array(square, [1, 2, 3])
    ids = [j.job_id for j in waiting]
    try:
        states = slurm_states(ids)
        assert {jid: states.get(jid) for jid in ids} == dict.fromkeys(ids, "PENDING"), states
    finally:
        blocker.cancel()
        for job in waiting:
            job.cancel()


@pytest.mark.slurm
def test_cancelled_job_raises(slurm_cluster, tmp_path):
    job = _executor(tmp_path, slurm_cluster).submit(stamp, str(tmp_path / "started"), 600)
    _wait_for((tmp_path / "started").exists, 30, "the job to start")
    job.cancel()
    # a job that ended without a result file makes result() wait 15 s (submitit's grace for slow shared
    # file systems, Job._results_timeout_s) before raising; not needed on a local disk
    job._results_timeout_s = 1
    result, error = _result_within(job, 30)
    assert isinstance(error, submitit.core.utils.UncompletedJobError), (result, error)
    assert job.state.startswith("CANCELLED")  # needs accounting: without slurmdbd it stays UNKNOWN


@pytest.mark.slurm
def test_preemption_requeues_and_resumes(slurm_cluster, tmp_path):
    progress = tmp_path / "progress"
    job = _executor(tmp_path, slurm_cluster).submit(Resumable(str(progress), steps=8, step_s=0.25))
    _wait_for(lambda: progress.exists() and int(progress.read_text()) >= 3, 30, "3 steps of progress")
    # submitit's own preemption path: SIGTERM (ignored), then USR2 to the job's steps; the handler sees
    # that far less than the time limit was used (preempted, not timed out), calls checkpoint(), writes
    # the returned DelayedSubmission over the job's submitted pickle, runs `scontrol requeue` on its own
    # job and exits; SLURM restarts the same job id after cred_expire (5 s here)
    job._interrupt()
    result, error = _result_within(job, 90)
    assert error is None, error
    assert result["count"] == 8 and result["restarts"] == "1"
    assert result["starts"][0] == 0 and result["starts"][1] >= 3  # resumed, did not start over

    def states() -> list[str]:  # -D: every run of the job, not only the last
        return slurm_cluster.run("sacct", "-j", job.job_id, "-D", "-X", "-n", "-o", "State").stdout.split()

    # slurmdbd can record the completion a moment after the result file appears
    _wait_for(lambda: states()[-1:] == ["COMPLETED"], 10, "sacct to record the completion")
    assert states() == ["REQUEUED", "COMPLETED"]


@pytest.mark.slurm
def test_start_after_a_crashed_run_cleans_up():
    """A cluster whose owner died without stop() is stopped and removed by the next cluster's start()."""
    crashed = SlurmCluster().start()
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        (crashed.root / "owner.pid").write_text(str(dead.pid))  # as if the owning pytest had been killed
        with SlurmCluster() as fresh:
            assert not any(alive(p) for p in crashed.started_pids)
            assert not crashed.root.exists()
            assert fresh.run("srun", "-t", "1", "true").returncode == 0
        assert not any(alive(p) for p in fresh.started_pids)
    finally:
        crashed.stop()  # a no-op once the fresh cluster has reaped it


@pytest.mark.slurm
def test_mlflow_metric_survives_restart(mlflow_server):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    exp = client.create_experiment(f"infra-restart-{time.time_ns()}")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "loss", 0.5, step=1)
    first_pids = list(mlflow_server.started_pids)
    mlflow_server.stop()
    assert not mlflow_server.healthy()
    assert not any(alive(p) for p in first_pids)
    mlflow_server.start()
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
    client.log_metric(run.info.run_id, "loss", 0.25, step=2)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [0.5, 0.25]
