"""The SLURM launcher: one job array per stage across cells. A cell's stages are chained with `aftercorr` (array
element i after element i of the upstream array) when the arrays line up, else `afterok` on the upstream array;
jobs whose dependency failed are cancelled (kill-on-invalid-dep). On preemption or time limit submitit signals the
job, `StageJob.checkpoint` requeues it, and the stage resumes from the checkpoint in its folder. The driver returns
after submitting unless `wait=true` (`wait_slurm`)."""

from __future__ import annotations

import os
import time

import submitit

from bench.launch.job import CellContext, StageJob
from bench.launch.records import active_tasks, record_jobs
from bench.launch.snapshot import code_setup
from bench.plan import Plan
from bench.stages import STAGES, single_process

STAGE_ORDER = tuple(STAGES)  # a stage after every stage it can read


def slurm_request(cluster: dict, resources: str, single: bool = False) -> dict:
    """What a stage's job asks SLURM for: the cluster's nodes with one task per GPU, or, for a stage that runs as
    one process (`bench.stages.single_process`), one task on one GPU with that GPU's share of a node's memory (not
    a whole node of idle GPUs). The plan has checked tasks_per_node = gpus_per_node (bench.plan.validate)."""
    gpus = int(cluster.get("gpus_per_node") or 0)
    request = dict(
        nodes=cluster["nodes"],
        tasks_per_node=cluster["tasks_per_node"],
        cpus_per_task=cluster["cpus_per_task"],
        mem_gb=cluster["mem_gb"],
        timeout_min=cluster["time_min"][resources],
    )
    if gpus:
        request["gpus_per_node"] = gpus
    if single:
        request.update(nodes=1, tasks_per_node=1)
        if gpus:
            request.update(gpus_per_node=1, mem_gb=-(-cluster["mem_gb"] // gpus))
    return request


def process_group_timeout(cluster: dict, resources: str) -> float:
    """The process group's timeout of a job's ranks (minutes): cluster.process_group_timeout_min, or by default the
    job's time limit, which bounds every wait of the other ranks on rank 0 (a duplicate job holding the stage's
    lock included)."""
    return float(cluster.get("process_group_timeout_min") or cluster["time_min"][resources])


def slurm_executor(
    plan: Plan,
    cluster: dict,
    launcher: dict,
    resources: str,
    name: str,
    dependency: str | None = None,
    code: str | os.PathLike | None = None,
    single: bool = False,
) -> submitit.AutoExecutor:
    folder = plan.root / "submitit" / time.strftime("%Y%m%d-%H%M%S")  # a fresh folder per invocation
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=launcher["max_timeouts"])
    extra = {"kill-on-invalid-dep": "yes"}
    if cluster.get("account"):
        extra["account"] = cluster["account"]
    params = dict(
        name=name,
        **slurm_request(cluster, resources, single),
        slurm_signal_delay_s=launcher["signal_delay_s"],
        slurm_additional_parameters=extra,
    )
    for key in ("partition", "qos", "constraint"):
        if cluster.get(key):
            params[f"slurm_{key}"] = cluster[key]
    if dependency:
        params["slurm_dependency"] = dependency
    if code:
        params["slurm_setup"] = code_setup(code)
    ex.update_parameters(**params)
    return ex


def submit_slurm(
    plan: Plan, contexts: dict[str, CellContext], cluster: dict, launcher: dict, code: str | os.PathLike | None = None
) -> list[str]:
    """Submit every unfinished task that has no queued/running job, the jobs importing the snapshot `code` when given
    (also once requeued); returns the new job ids."""
    active = active_tasks(plan)
    todo = [t for t in plan.tasks() if not t.done and t.uid not in active]
    # task key -> job id (this invocation's and still-active ones)
    submitted = {t.key: active[t.uid] for t in plan.tasks() if t.uid in active}
    arrays: dict[str, tuple[str, list[str]]] = {}  # stage -> (array job id, cells in order)
    new_ids = []
    for stage in STAGE_ORDER:
        tasks = [t for t in todo if t.stage == stage]
        if not tasks:
            continue
        cells = [t.cell for t in tasks]
        deps = set()
        for need_stage in sorted({n.split("/")[1] for t in tasks for n in t.needs}):
            if need_stage in arrays and arrays[need_stage][1] == cells:  # never a shared stage: its cell is _shared
                deps.add(f"aftercorr:{arrays[need_stage][0]}")
                continue
            for t in tasks:
                for n in t.needs:
                    if n.endswith("/" + need_stage) and n in submitted:
                        deps.add(f"afterok:{submitted[n]}")
        ex = slurm_executor(
            plan,
            cluster,
            launcher,
            tasks[0].resources,
            f"{plan.grid}-{stage}",
            ",".join(sorted(deps)) or None,
            code,
            single_process(stage),
        )
        timeout = process_group_timeout(cluster, tasks[0].resources)
        with ex.batch():
            jobs = [
                ex.submit(
                    StageJob(
                        [t],
                        {t.cell: contexts[t.cell]},
                        cluster["cpus_per_task"],
                        code=str(code) if code else None,
                        pg_timeout_min=timeout,
                    )
                )
                for t in tasks
            ]
        array_id = jobs[0].job_id.split("_")[0]
        arrays[stage] = (array_id, cells)
        for t, job in zip(tasks, jobs):
            submitted[t.key] = job.job_id
        record_jobs(
            plan,
            "slurm",
            [(job.job_id, [t.uid]) for t, job in zip(tasks, jobs)],
            {job.job_id: job for job in jobs},
            code,
        )
        new_ids += [j.job_id for j in jobs]
        print(
            f"submitted {stage:<10} array {array_id} ({len(jobs)} tasks)"
            + (f" after {', '.join(sorted(deps))}" if deps else "")
        )
    return new_ids


def wait_slurm(plan: Plan, poll_s: float = 5.0) -> int:
    """Block until no job of this grid is queued or running; returns the number of unfinished tasks."""
    while active_tasks(plan):
        time.sleep(poll_s)
    return sum(not t.done for t in plan.tasks())
