"""The job: a submitit callable (`StageJob`) that runs a cell's stages in order, is requeued on preemption or
timeout, and ends with the local driver that started it (`end_with_driver`); and the cell's MLflow run marked
finished (`finish_cell`) or failed (`record_failure`) by whichever job ends it. Submitit pickles `StageJob` and its
`CellContext`s, so they live at this module's path, which every job imports."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import submitit

from bench import tracking as T
from bench.core.dist import TIMEOUT_ENV
from bench.launch.records import process_identity
from bench.launch.snapshot import report_code
from bench.plan import SHARED
from bench.stages import StageTask, Tracking, any_random, cell_cost, final_metrics, run_task
from bench.stages.base import short_hash

FINISHED_MARK = "cell_finished"
TAG_STAGE_IDS = "titok.stage_ids"  # the cell's current stages, `stage-identity` comma-separated


@dataclass
class CellContext:
    """What a job needs to finish its cell's MLflow run once every stage of the cell is done."""

    tasks: list[StageTask]
    tracking: Tracking | None
    tags: dict[str, str]
    dir: str  # holds the run record: the cell's run folder (the grid's folder for the shared stages)


class StageJob:
    """A submitit callable running `tasks` in order. On preemption or timeout submitit calls `checkpoint`, which
    requeues the same callable: every stage resumes from its own folder (finished stages are skipped). `driver`:
    the local driver's (PID, `process_identity`), which the job does not outlive (`end_with_driver`). `code`: the
    snapshot the job was submitted to import (`snapshot_code`); the job's log says where it imported from.
    `pg_timeout_min`: the process group's timeout of its ranks (`process_group_timeout`)."""

    def __init__(
        self,
        tasks: list[StageTask],
        contexts: dict[str, CellContext],
        threads: int | None = None,
        driver: tuple[int, str | None] | None = None,
        code: str | None = None,
        pg_timeout_min: float | None = None,
    ):
        self.tasks, self.contexts, self.threads, self.driver, self.code = tasks, contexts, threads, driver, code
        self.pg_timeout_min = pg_timeout_min

    def __call__(self) -> list[str]:
        if self.driver:
            end_with_driver(*self.driver)
        report_code(getattr(self, "code", None))  # a job pickled before `code` existed has none
        if getattr(self, "pg_timeout_min", None):
            os.environ[TIMEOUT_ENV] = f"{self.pg_timeout_min:g}"  # read by bench.core.dist.setup
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # one process per GPU: torch.distributed from SLURM
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        done = []
        for task in self.tasks:
            ctx = self.contexts[task.cell]
            try:
                run_task(replace(task, threads=self.threads or task.threads), ctx.tracking)
            except (SystemExit, KeyboardInterrupt):
                raise  # submitit exits to requeue a preempted job, Ctrl-C cancels: neither is the stage failing
            except Exception as err:
                if int(os.environ.get("RANK", "0")) == 0:
                    record_failure(ctx, task.stage, f"{type(err).__name__}: {err}")
                raise
            done.append(task.key)
            if int(os.environ.get("RANK", "0")) == 0:
                finish_cell(ctx)
        return done

    def checkpoint(self, *args, **kwargs):
        return submitit.helpers.DelayedSubmission(self)


def record_failure(ctx: CellContext, stage: str, error: str) -> None:
    """Mark the cell's run FAILED at `stage`, with `error` as its error tag: by the job whose stage raised, or by
    the local driver for a job killed before Python could see it."""
    if ctx.tracking:
        log = ctx.tracking.logger()
        log.set_tags({T.TAG_STATUS: "failed", T.TAG_FAILED_STAGE: stage, T.TAG_ERROR: error[:4000]})
        log.set_status("FAILED")
        log.flush()


def end_with_driver(pid: int, identity: str | None, poll_s: float = 0.5) -> None:
    """End this job's process once the local driver that started it, or submitit's controller between the two (the
    job's parent), is gone: a killed driver leaves no trainer running unobserved, and one killed controller none
    that its job record no longer names. A daemon thread polls both (no signal reaches a process when a
    grandparent dies)."""
    controller = os.getppid()

    def watch() -> None:
        while os.getppid() == controller and process_identity(pid) == identity:
            time.sleep(poll_s)
        print(
            f"the sweep driver (PID {pid}) or this job's controller (PID {controller}) is gone: ending the job",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)  # as a kill would: every file the job writes survives one (atomic writes, the stage lock)

    threading.Thread(target=watch, name="end-with-driver", daemon=True).start()


def finish_cell(ctx: CellContext) -> bool:
    """Once every stage of a cell is done: metrics, costs, status and tags into its run, exactly once per set of
    stage identities (an evaluation re-run with other settings finishes the run again)."""
    if not ctx.tasks or not all(t.done for t in ctx.tasks):  # no tasks: a grid without shared stages
        return False
    mark = Path(ctx.dir) / f"{FINISHED_MARK}-{short_hash(sorted(t.uid for t in ctx.tasks))}"
    try:
        fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # several jobs of a cell may end together
        os.close(fd)
    except FileExistsError:
        return True
    if ctx.tracking:
        log = ctx.tracking.logger()
        # the current stages' numbers are the run's latest, also where an earlier set of settings logged others
        metrics = final_metrics(ctx.tasks)
        if ctx.tasks[0].cell != SHARED:
            metrics.update(cell_cost(ctx.tasks))
        if metrics:
            log.log_metrics(metrics)
        random = any_random(ctx.tasks)
        tags = dict(
            ctx.tags,
            **{
                T.TAG_STATUS: "finished",
                T.TAG_STAGES_DONE: ",".join(t.stage for t in ctx.tasks),
                TAG_STAGE_IDS: ",".join(Path(t.out_dir).name for t in ctx.tasks),
                T.TAG_WEIGHTS_RANDOM: str(random).lower(),
            },
        )
        if random:
            tags[T.TAG_SMOKE] = "true"
        log.set_tags(tags)
        log.set_status("FINISHED")
        log.flush()
    return True
