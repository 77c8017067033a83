"""A stage of a plan as a job: `StageTask` (the stage, its spec, identity and folder, the tasks it waits for),
`new_task` (its identity through the stage module) and `run_task`.

`run_task` is idempotent: a task whose `result.json` exists is skipped; an interrupted training stage resumes from
the checkpoint in its folder; one process at a time runs a stage (a lock in its folder). Metrics and tags go to the
cell's MLflow run through `bench.tracking.RunLogger` (which never fails the job); the tags include the revision and
sha256 of every registry file (bench.weights) the stage used, or that it was a random stand-in. Rank 0 of a training
stage also logs the machine's CPU/GPU utilisation and memory as system/* metrics every 10 s
(bench.tracking.SystemMetrics; Tracking.system_metrics_s or $TITOK_SYSTEM_METRICS_S, 0 turns them off).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import tracking as T
from bench import weights
from bench.core import dist as D
from bench.core.io import atomic_write_json, atomic_write_text
from bench.core.lock import follow_polled_lock, owner_lock, polled_owner_lock
from bench.stages.base import Context
from bench.stages.registry import STAGES

RESULT = "result.json"
SPEC = "spec.json"
LOCK = ".owner.lock"  # held by the process running the stage (bench.core.lock.owner_lock)
LOCK_POLL_S = 2.0  # a multi-rank job: seconds between rank 0's tries of a stage lock another job holds
LOGGED = ".logged_step"  # the last training-curve step logged: a resumed stage does not log a step twice


def stage_module(name: str):
    return STAGES[name]


def single_process(stage: str) -> bool:
    """Whether `stage` runs as one process on one device (its module's SINGLE_PROCESS): the launcher asks for one
    task and one GPU for it."""
    return bool(getattr(stage_module(stage), "SINGLE_PROCESS", False))


@dataclass(frozen=True)
class StageTask:
    grid: str
    cell: str  # the cell name, or "_shared"
    stage: str
    identity: str
    out_dir: str  # <cell folder>/<stage>-<identity>
    spec: object
    needs: tuple[str, ...] = ()  # keys of the tasks that must finish first
    resources: str = "train"  # "train" | "eval": picks the cluster's time limit
    threads: int | None = None

    @property
    def key(self) -> str:
        """`cell/stage`: names the task within a plan."""
        return f"{self.cell}/{self.stage}"

    @property
    def uid(self) -> str:
        """`cell/stage-identity`: names the task across plans (job records), as its folder under the grid."""
        return f"{self.cell}/{Path(self.out_dir).name}"

    @property
    def product(self) -> str:
        """The file the stages reading this one open."""
        return str(Path(self.out_dir) / stage_module(self.stage).PRODUCT)

    @property
    def done(self) -> bool:
        return (Path(self.out_dir) / RESULT).is_file()

    def result(self) -> dict | None:
        path = Path(self.out_dir) / RESULT
        return json.loads(path.read_text()) if path.is_file() else None


def new_task(
    grid: str, cell: str, stage: str, spec, folder: Path, inputs: dict[str, StageTask | None] | None = None
) -> StageTask:
    """The task of `stage` with `spec`, in `folder`/<stage>-<identity>. `inputs`: role -> the task whose product
    the spec names (None, or a role left out: the input comes from outside the plan)."""
    module = stage_module(stage)
    made = {role: t for role, t in (inputs or {}).items() if t is not None}
    identity = module.RULE.identity(spec, {role: t.identity for role, t in made.items()})
    return StageTask(
        grid,
        cell,
        stage,
        identity,
        str(folder / f"{stage}-{identity}"),
        spec,
        tuple(t.key for t in made.values()),
        module.RESOURCES,
    )


@dataclass(frozen=True)
class Tracking:
    """Where a cell logs: the store and the folder of its run record and buffer (for the shared stages: the
    sweep's run)."""

    uri: str
    run_dir: str
    system_metrics_s: float | None = None  # seconds between system/* samples of a training stage (None: the
    # environment's $TITOK_SYSTEM_METRICS_S, else 10 s; 0: none)

    @property
    def buffer(self) -> Path:
        return Path(self.run_dir) / T.BUFFER_FILE

    def logger(self) -> T.RunLogger:
        return T.RunLogger(self.uri, self.run_dir)

    def system_metrics(self, task: StageTask, info: D.DistInfo):
        """The system/* sampler of a training stage's rank 0 (a logger of its own); a no-op elsewhere."""
        interval = T.system_metrics_interval() if self.system_metrics_s is None else self.system_metrics_s
        if task.resources != "train" or not info.is_main or interval <= 0:
            return nullcontext()
        return T.SystemMetrics(self.logger(), interval)


def run_task(task: StageTask, tracking: Tracking | None = None) -> dict:
    """Run one stage (all ranks), record its result (rank 0) and log it. Returns the result dict.

    A stage folder has one owner at a time: rank 0 holds its lock (`LOCK`) for the whole stage, and a job that finds
    another process holding it (a second sweep, a job left running by a killed driver) waits, then skips the stage
    if that process finished it and resumes it as usual if not (the kernel drops a dead holder's lock)."""
    if task.done:
        return task.result()
    if task.threads:
        torch.set_num_threads(task.threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(task.threads)  # numpy/scipy BLAS too (the FID matrix functions)
    out = Path(task.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = D.setup(getattr(task.spec, "device", "auto"))
    if info.distributed:  # rank 0 tries the lock without blocking; every rank hears each try's outcome, between
        # sleeps: ranks waiting for another job's owner never wait inside a collective (it would time out)
        agree = functools.partial(D.main_rank_says, device=info.device)
        owned = (
            polled_owner_lock(out / LOCK, lambda pid: _waiting(task, pid), agree, LOCK_POLL_S)
            if info.is_main
            else _following(agree)
        )
    else:
        owned = owner_lock(out / LOCK, lambda pid: _waiting(task, pid))
    with owned:
        # every rank takes rank 0's word on whether the stage is done
        if D.any_rank(info.is_main and task.done, info.device):
            return task.result()
        return _run_owned(task, tracking, info, out)


@contextmanager
def _following(agree) -> Iterator[None]:
    follow_polled_lock(agree, LOCK_POLL_S)
    yield


def _waiting(task: StageTask, pid: int | None) -> None:
    print(
        f"{task.uid}: another process (PID {pid or 'unknown'}) owns this stage; waiting for it to end",
        file=sys.stderr,
        flush=True,
    )


def _run_owned(task: StageTask, tracking: Tracking | None, info: D.DistInfo, out: Path) -> dict:
    logger = tracking.logger() if tracking and info.is_main else None
    if logger:
        logger.set_tags({T.TAG_STATUS: "running"})
        logger.delete_tags(T.ERROR_TAGS)  # an earlier job's failure is no longer the run's state
        logger.set_status("RUNNING")

    logged = out / LOGGED
    last = [int(logged.read_text()) if logged.is_file() and logged.read_text().strip().isdigit() else 0]

    def log(metrics: dict, step: int) -> None:
        # a step at or below the last one logged was logged by an earlier attempt (resumed from an older
        # checkpoint): each curve point once (the same numbers: the resume is exact)
        if logger and step > last[0]:
            logger.log_metrics({k: float(v) for k, v in metrics.items()}, step)
            atomic_write_text(logged, f"{step}\n")
            last[0] = step

    if info.is_main:
        atomic_write_json(
            out / SPEC,
            {"stage": task.stage, "cell": task.cell, "identity": task.identity, "spec": dataclasses.asdict(task.spec)},
        )
    t0 = time.time()
    named = spec_weights(task.spec)  # checked before the work, not after
    system = tracking.system_metrics(task, info) if tracking else nullcontext()
    with weights.recording() as used, system:
        result = stage_module(task.stage).run(task.spec, Context(out, info, log))
    result.update(
        stage=task.stage,
        cell=task.cell,
        identity=task.identity,
        wall_s=result.get("wall_s", time.time() - t0),
        device=_device_name(info),
        devices=_device_count(info, task.threads),
    )
    if info.is_main:
        result["tags"] = {**weights_tags({**used, **named}), **result.get("tags", {})}
        if "precision" in result:  # a training stage: what ran, which may be fp32 where autocast is slow
            result["tags"][T.precision_tag(task.stage)] = result["precision"]
        # logged (or fsynced into the buffer) before the result marks the stage done: a job killed in between
        # runs the stage again instead of leaving its metrics out of MLflow
        if logger:
            logger.log_metrics(numeric(result["metrics"]))
            tags = {T.TAG_DEVICE: result["device"], **result.get("tags", {})}
            if any(result.get("random_weights", {}).values()):
                tags[T.TAG_WEIGHTS_RANDOM] = "true"
            logger.set_tags(tags)
            for artifact in result.get("artifacts", []):
                logger.log_artifact(artifact, task.stage)
            logger.log_artifact(str(out / SPEC), f"specs/{task.stage}")
        atomic_write_json(out / RESULT, result)
    D.barrier()  # rank 0 releases the stage once every rank is through it
    return result


def spec_weights(spec) -> dict[str, Path]:
    """The registry files a spec names by their path in the cache (the plan resolves some names to paths), each
    checked against its source record (weights.require)."""
    names = {weights.name_of(value) for value in _strings(dataclasses.asdict(spec))} - {None}
    return {name: weights.require(name) for name in sorted(names)}


def weights_tags(used: dict[str, Path | None]) -> dict[str, str]:
    """Tags naming each registry file a stage used (name -> its file, None: a stand-in) with the revision it was
    fetched at and its sha256, or that it was a stand-in (bench.weights.provenance)."""
    return {
        T.weights_tag(name, kind): value
        for name, path in sorted(used.items())
        for kind, value in weights.provenance(name, path).items()
    }


def _strings(tree) -> list[str]:
    if isinstance(tree, str):
        return [tree] if tree else []
    if isinstance(tree, dict):
        tree = list(tree.values())
    return [s for item in tree for s in _strings(item)] if isinstance(tree, (list, tuple)) else []


def numeric(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _device_name(info: D.DistInfo) -> str:
    if info.device.type == "cuda":
        return f"{torch.cuda.get_device_name(info.device)} x{info.world_size}"
    return f"cpu x{info.world_size}"


def _device_count(info: D.DistInfo, threads: int | None) -> int:
    """Accelerators the stage's job holds (what it costs, used or not: bench.core.dist.allocated_gpus); on the
    CPU, cores (threads) across ranks."""
    if info.device.type == "cuda":
        return D.allocated_gpus(info)
    return info.world_size * (threads or torch.get_num_threads())


# ---- summaries of a cell's finished tasks -------------------------------------------------------------------------
def final_metrics(tasks: list[StageTask]) -> dict[str, float]:
    """The numeric metrics of the tasks' results (the cell's current stages)."""
    out: dict[str, float] = {}
    for task in tasks:
        out.update(numeric((task.result() or {}).get("metrics", {})))
    return out


def cell_cost(tasks: list[StageTask]) -> dict[str, float]:
    """cost_gpu_hours (CPU: core-hours) and cost_wall_hours of a cell's training stages; cost_lost_gpu_hours, the
    part of cost_gpu_hours spent on work done again after a preemption, time limit or kill."""
    gpu_s = wall_s = lost_s = 0.0
    for task in tasks:
        r = task.result()
        if r and task.resources == "train":
            wall_s += r["wall_s"]
            gpu_s += r["wall_s"] * r.get("devices", 1)
            lost_s += r.get("lost_s", 0.0) * r.get("devices", 1)
    return {"cost_gpu_hours": gpu_s / 3600, "cost_wall_hours": wall_s / 3600, "cost_lost_gpu_hours": lost_s / 3600}


def any_random(tasks: list[StageTask]) -> bool:
    return any(any((t.result() or {}).get("random_weights", {}).values()) for t in tasks)
