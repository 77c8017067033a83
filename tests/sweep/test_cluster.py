"""The cluster request: the plan refuses a GPU cluster whose tasks per node are not its GPUs per node, single-process
stages ask SLURM for one task and one GPU, the logged GPU-hours count the GPUs a job holds, and the process group's
timeout is the cluster's setting, passed from the launcher into init_process_group (gloo, 2 ranks)."""

import os
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from bench import launch
from bench.core import dist as D
from bench.cost import StageCost, device_from_cluster
from bench.launch import slurm
from bench.plan import PlanError, make_plan
from bench.stages import single_process, task
from tests.distributed import join, spawn
from tests.sweep.test_plan import config


def test_a_gpu_cluster_with_other_tasks_than_gpus_per_node_is_refused(tmp_path):
    for tasks in (1, 16):
        with pytest.raises(
            PlanError,
            match=f"cluster.tasks_per_node={tasks} but cluster.gpus_per_node=8: .*set cluster.tasks_per_node=8",
        ):
            make_plan(config("cluster=example", f"cluster.tasks_per_node={tasks}", tmp_path=tmp_path))
    make_plan(config("cluster=example", tmp_path=tmp_path))  # 8 and 8
    make_plan(config("cluster=local", "cluster.tasks_per_node=2", tmp_path=tmp_path))  # CPU ranks: any number
    with pytest.raises(PlanError, match="cluster.process_group_timeout_min=0: a positive number of minutes"):
        make_plan(config("cluster=example", "cluster.process_group_timeout_min=0", tmp_path=tmp_path))


class _Executor:
    """submitit's AutoExecutor as submit_slurm drives it, recording each array's parameters and jobs."""

    made: list = []

    def __init__(self, folder, cluster, **kwargs):
        self.params, self.jobs = {}, []
        _Executor.made.append(self)

    def update_parameters(self, **params):
        self.params.update(params)

    @contextmanager
    def batch(self):
        yield

    def submit(self, job):
        self.jobs.append(job)
        job_id = f"{len(_Executor.made)}_{len(self.jobs) - 1}"
        paths = SimpleNamespace(stderr=Path(f"{job_id}.err"), result_pickle=Path(f"{job_id}_result.pkl"))
        return SimpleNamespace(job_id=job_id, paths=paths)  # what record_jobs reads of a submitit Job


def test_single_process_stages_ask_for_one_task_and_one_gpu(tmp_path, monkeypatch):
    cfg = config(
        "cluster=example",
        "launcher=slurm",
        "grid.sizes=[S]",
        "grid.num_tokens=[16]",
        "preset.teacher.source=train",
        tmp_path=tmp_path,
    )
    plan = make_plan(cfg)
    plan.root.mkdir(parents=True)
    contexts = {c.name: launch.CellContext(c.tasks, None, {}, str(c.run_dir)) for c in plan.cells}
    contexts["_shared"] = launch.CellContext(plan.shared, None, {}, str(plan.root))
    monkeypatch.setattr(slurm.submitit, "AutoExecutor", _Executor)
    monkeypatch.setattr(slurm, "active_tasks", lambda plan: {})  # no squeue here: nothing queued
    _Executor.made = []
    cluster = dict(cfg.cluster)
    cluster["time_min"] = dict(cluster["time_min"])
    launch.submit_slurm(plan, contexts, cluster, dict(cfg.launcher))
    by_stage = {ex.params["name"].rsplit("-", 1)[1]: ex for ex in _Executor.made}
    assert {"teacher", "stage1", "speed"} <= set(by_stage)
    for stage, ex in by_stage.items():
        request = {k: ex.params[k] for k in ("nodes", "tasks_per_node", "gpus_per_node", "mem_gb")}
        if stage in ("teacher", "speed"):
            assert single_process(stage)
            assert request == {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 1, "mem_gb": 60}, stage
        else:
            assert request == {"nodes": 1, "tasks_per_node": 8, "gpus_per_node": 8, "mem_gb": 480}, stage
        # the process group's timeout: by default the job's time limit
        resources = ex.jobs[0].tasks[0].resources
        assert [j.pg_timeout_min for j in ex.jobs] == [cluster["time_min"][resources]] * len(ex.jobs)
    _Executor.made = []
    launch.submit_slurm(plan, contexts, dict(cluster, process_group_timeout_min=45), dict(cfg.launcher))
    assert {j.pg_timeout_min for ex in _Executor.made for j in ex.jobs} == {45}


def test_logged_gpu_hours_count_the_gpus_the_job_holds(monkeypatch):
    one_rank = D.DistInfo(device=torch.device("cuda", 0))
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        monkeypatch.delenv(key, raising=False)
    assert task._device_count(one_rank, None) == 1  # outside SLURM: one GPU per rank
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "8")  # a job holding a node's 8 GPUs with one rank on it
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    assert task._device_count(one_rank, None) == 16
    # the estimate: a single-process stage holds one GPU, so its wall time is that of one GPU, its GPU-hours alike
    device = device_from_cluster({"gpus_per_node": 8, "device": {"peak_tflops": 312, "utilization": 0.4}})
    line = StageCost("c", "speed", 10**18, 1, "batch 1")
    whole, single = line.hours(device), StageCost("c", "speed", 10**18, 1, "batch 1", single=True).hours(device)
    assert single[0] == pytest.approx(whole[0]) and single[1] == pytest.approx(8 * whole[1])


def _timeout_worker(rank, world, port, folder):
    join(rank, world, port)
    seen = {}
    real = dist.init_process_group

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    dist.init_process_group = recording
    info = D.setup("cpu")
    total = D.all_reduce_sum(torch.ones(1))  # the group works
    Path(folder, f"rank{rank}").write_text(f"{seen['timeout'].total_seconds()} {total.item()} {info.world_size}")
    dist.destroy_process_group()


def test_the_configured_timeout_reaches_init_process_group(tmp_path, monkeypatch):
    monkeypatch.setenv(D.TIMEOUT_ENV, "")
    launch.StageJob([], {}, pg_timeout_min=7)()  # what a job does first: the cluster's setting into its environment
    assert os.environ[D.TIMEOUT_ENV] == "7"
    spawn(_timeout_worker, 2, str(tmp_path))  # spawned ranks inherit the environment
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["420.0 2.0 2"] * 2
    monkeypatch.setenv(D.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="TITOK_BENCH_PG_TIMEOUT_MIN='soon': .* positive number of minutes"):
        D.timeout_minutes()
    monkeypatch.delenv(D.TIMEOUT_ENV)
    assert D.timeout_minutes() == D.DEFAULT_TIMEOUT_MIN
