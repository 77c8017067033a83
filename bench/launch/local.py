"""The local launcher: one process per cell runs the cell's unfinished stages in order, `max_parallel` cells at a
time, the largest cells first (`longest_first`), after the shared stages, which run alone. The driver waits;
Ctrl-C cancels the running jobs."""

from __future__ import annotations

import os
import sys
import time

import submitit

from bench.cost import plan_costs
from bench.launch.job import CellContext, StageJob, record_failure
from bench.launch.records import process_identity, record_jobs
from bench.launch.snapshot import code_env, job_environment
from bench.plan import SHARED, Plan
from bench.stages import StageTask


def longest_first(plan: Plan) -> list[list[StageTask]]:
    """Each cell's unfinished tasks, the cells in decreasing estimated FLOPs of those tasks (bench.cost), so that
    the last jobs to start are short ones and no core idles for long behind the largest cell (in grid order that is
    TiTok-L-256, last). Stages without an analytic count (Inception) count 0; ties keep the grid order."""
    costs = plan_costs(plan)
    todo = []
    for cell in plan.cells:
        pending = [(t, c) for t, c in zip(cell.tasks, costs[cell.name], strict=True) if not t.done]
        todo.append(([t for t, _ in pending], sum(c.flops for _, c in pending)))
    return [tasks for tasks, _ in sorted(todo, key=lambda item: -item[1])]


def run_local(
    plan: Plan,
    contexts: dict[str, CellContext],
    max_parallel: int,
    threads: int | None,
    poll_s: float = 1.0,
    code: str | os.PathLike | None = None,
) -> int:
    """Run every unfinished task on this machine, the jobs importing the snapshot `code` (`snapshot_code`) when
    given; returns the number of failed jobs."""
    folder = plan.root / "submitit" / time.strftime("%Y%m%d-%H%M%S")
    executor = submitit.AutoExecutor(folder=folder, cluster="local")
    executor.update_parameters(timeout_min=60 * 24 * 7)
    groups = [[t for t in plan.shared if not t.done]] + longest_first(plan)
    groups = [g for g in groups if g]
    # unless set, the shared job (it runs alone) gets every core and the cell jobs running together share them
    cpus = os.cpu_count() or 1
    cell_jobs = sum(g[0].cell != SHARED for g in groups)
    shared_threads = threads or cpus
    threads = threads or max(1, cpus // max(1, min(max_parallel, cell_jobs)))
    print(
        f"running {sum(map(len, groups))} stages in {len(groups)} local jobs, {max_parallel} at a time, "
        f"{threads} threads each; logs: {folder}"
    )
    failed, running, queue = 0, [], list(groups)
    shared_pending = bool(groups and groups[0][0].cell == SHARED)
    t0 = time.time()
    driver = (os.getpid(), process_identity(os.getpid()))
    try:
        while queue or running:
            # the shared stages (teacher, reference statistics) run alone, before any cell
            while queue and len(running) < max_parallel and not (shared_pending and running):
                tasks = queue.pop(0)
                job_threads = shared_threads if tasks[0].cell == SHARED else threads
                with job_environment(code_env(code)):
                    job = executor.submit(StageJob(tasks, contexts, job_threads, driver, str(code) if code else None))
                record_jobs(plan, "local", [(job.job_id, [t.uid for t in tasks])], {job.job_id: job}, code)
                running.append((job, tasks))
                if tasks[0].cell == SHARED:
                    break
            time.sleep(poll_s)
            for job, tasks in list(running):
                if not job.done():
                    continue
                running.remove((job, tasks))
                if tasks[0].cell == SHARED:
                    shared_pending = False
                if not report_ended(job, tasks, contexts, time.time() - t0):
                    failed += 1
                    if tasks[0].cell == SHARED:
                        print("the shared stages failed: no cell can run", file=sys.stderr)
                        for j, _ in running:
                            j.cancel()
                        return failed + len(queue) + len(running)
    except KeyboardInterrupt:
        for job, _ in running:
            job.cancel()
        raise
    return failed


KILLED = (
    "the job's process was killed without a Python error (a signal such as SIGKILL: kill -9, the out-of-memory killer)"
)


def report_ended(job: submitit.Job, tasks: list[StageTask], contexts: dict[str, CellContext], elapsed: float) -> bool:
    """Print an ended local job's line; True when it succeeded. A job killed without a Python error (no result file)
    could not mark its run: it is marked FAILED here, at the first stage the job left unfinished, so the run does not
    stay RUNNING (a job that raised has recorded its own failure)."""
    try:
        job.result()
    except Exception as err:
        print(
            f"[{elapsed:7.1f}s] FAILED {tasks[0].cell}: {_first_line(err, job)}\n          log: {job.paths.stderr}",
            file=sys.stderr,
        )
        unfinished = [t for t in tasks if not t.done]
        if not job.paths.result_pickle.exists() and unfinished:
            record_failure(contexts[unfinished[0].cell], unfinished[0].stage, f"{KILLED}; log: {job.paths.stderr}")
        return False
    print(f"[{elapsed:7.1f}s] done   {tasks[0].cell}: {', '.join(t.stage for t in tasks)}")
    return True


def _first_line(err: BaseException, job: submitit.Job) -> str:
    """The line that names the real error. A job without a result file ended without Python seeing it (its log's
    last lines are submitit's start-up notes). submitit wraps a job's traceback between dashed rules, followed by
    the log paths; the traceback's last line is the exception."""
    if not job.paths.result_pickle.exists():
        return KILLED
    text = str(err)
    if "\n-----" in text:
        text = text.split("\n-----")[1]
    lines = [line for line in text.strip("-\n ").splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__
