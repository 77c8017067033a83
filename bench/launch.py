"""Launching a plan with submitit: the job callable (requeue-able), the local and SLURM launchers, the record
of submitted jobs (for idempotent reruns, status and cancellation), and cell bookkeeping in MLflow.

- local: one process per cell runs the cell's unfinished stages in order, `max_parallel` cells at a time, the
  largest cells first (`longest_first`); the shared stages run first. The driver waits (Ctrl-C cancels the
  running jobs).
- slurm: one job array per stage across cells; a cell's stages are chained with `aftercorr` (array element i
  after element i of the upstream array) when the arrays line up, else `afterok` on the upstream array; jobs
  whose dependency failed are cancelled (kill-on-invalid-dep). Preemption or time limit: submitit signals the
  job, `StageJob.checkpoint` requeues it, and the stage resumes from the checkpoint in its folder. The driver
  returns after submitting unless `wait=true`.
Job records name tasks by `StageTask.uid` (`cell/stage-identity`, their folders), so a task whose settings changed
is never taken for the queued job of its old settings.
Jobs import the code as it was at submission, not as the working tree holds it when they (re)start: the driver
copies the checkout into `<grid folder>/code/<code version>-<content hash>/` (`snapshot_code`) and every job runs
with that copy first on its import path (`code_env`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import submitit

from bench import tracking as T
from bench.core.dist import TIMEOUT_ENV
from bench.cost import plan_costs
from bench.plan import SHARED, Plan
from bench.stages import STAGES, StageTask, Tracking, any_random, cell_cost, final_metrics, run_task, single_process
from bench.stages.base import short_hash

JOBS_FILE = "jobs.jsonl"
FINISHED_MARK = "cell_finished"
TAG_STAGE_IDS = "titok.stage_ids"  # the cell's current stages, `stage-identity` comma-separated
ACTIVE_STATES = (
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "RESIZING",
    "SUSPENDED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
)


# ---- the job -----------------------------------------------------------------------------------------------------
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


# ---- the code the jobs import ------------------------------------------------------------------------------------
CODE_DIR = "code"  # <grid folder>/code/<code version>-<content hash>/
SNAPSHOT_SKIP = ("tests/",)  # the test suite and its reference data (~50 MB of parity weights): no job imports them


def snapshot_code(dest: str | os.PathLike, root: str | os.PathLike | None = None) -> Path | None:
    """Copy the checkout's git-tracked files (but `SNAPSHOT_SKIP`) as the working tree holds them, a dirty tree's
    edits included, into `dest/<code version>-<content hash>/`, and return that folder: the code the sweep's jobs
    import, whenever they start or are requeued. Untracked files are not copied (`git add` a new module first);
    neither are .git, .venv or outputs. The same content gives the same folder, copied once: an existing one is
    reused; a new one is written into a temporary folder beside it and renamed, so a folder under its final name is
    complete. None where `root` is no git checkout (the jobs then import what the working tree holds)."""
    root = Path(root).resolve() if root else Path(__file__).resolve().parents[1]
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached"], cwd=root, capture_output=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    files: dict[str, tuple[bytes | str, int]] = {}  # name -> (contents, mode), or (link target, 0) for a symlink
    digest = hashlib.sha256()
    for name in sorted(set(filter(None, os.fsdecode(listed).split("\0")))):
        path = root / name
        if name.startswith(SNAPSHOT_SKIP):
            continue
        if path.is_symlink():
            files[name] = (os.readlink(path), 0)
            digest.update(f"{name}\0link\0{files[name][0]}\0".encode())
        elif path.is_file():  # not a file deleted in the working tree, nor a submodule
            data, mode = path.read_bytes(), 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644
            files[name] = (data, mode)
            digest.update(f"{name}\0{mode:o}\0{len(data)}\0".encode() + data)
    if not files:
        return None  # a repository with nothing tracked yet
    final = Path(dest).resolve() / f"{code_version(root)}-{digest.hexdigest()[:12]}"
    if final.is_dir():
        return final  # this code, copied by an earlier sweep
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        for name, (data, mode) in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, str):
                os.symlink(data, target)
            else:
                target.write_bytes(data)
                target.chmod(mode)
        tmp.chmod(0o755)  # mkdtemp's folder is 0700
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise  # else another driver renamed the same snapshot into place first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def code_env(code: str | os.PathLike | None) -> dict[str, str]:
    """The environment that makes a job import `code`: first on PYTHONPATH, so ahead of the editable install (whose
    finder Python asks after sys.path), and the job's current folder off sys.path (PYTHONSAFEPATH, Python >= 3.11):
    `python -m submitit...` puts that folder first, and a driver started in the checkout would otherwise have its
    jobs import the working tree. A local job inherits it from the driver (`job_environment`)."""
    if not code:
        return {}
    return {
        "PYTHONPATH": os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONSAFEPATH": "1",
    }


def code_setup(code: str | os.PathLike | None) -> list[str]:
    """`code_env` as lines of a SLURM job's batch script, which a requeued job runs again."""
    if not code:
        return []
    return [f"export PYTHONPATH={shlex.quote(str(code))}${{PYTHONPATH:+:$PYTHONPATH}}", "export PYTHONSAFEPATH=1"]


@contextmanager
def job_environment(env: dict[str, str]) -> Iterator[None]:
    """`env` in os.environ meanwhile (the local executor starts a job with the driver's environment)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def report_code(code: str | None) -> set[Path]:
    """Say in the job's log where this process imports `bench` and `models` from (returned), with a warning when
    that is not the snapshot `code` it was submitted to import."""
    import models

    roots = {Path(__file__).resolve().parents[1], Path(models.__file__).resolve().parents[1]}
    names = ", ".join(map(str, sorted(roots)))
    print(f"code: bench and models imported from {names}" + (f" (snapshot {code})" if code else ""), flush=True)
    if code and roots != {Path(code).resolve()}:
        print(
            f"warning: this job was submitted to import the code snapshot {code}, not {names}: it runs whatever "
            f"code is there now, which titok.code_version may not name (on Python < 3.11 a job's current folder "
            f"comes first on sys.path: start the sweep outside the checkout)",
            file=sys.stderr,
            flush=True,
        )
    return roots


# ---- tracking set-up by the driver ------------------------------------------------------------------------------
def code_version(root: str | os.PathLike | None = None) -> str:
    root = Path(root) if root else Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (sha or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def prepare_tracking(plan: Plan, uri: str, code: str | os.PathLike | None = None) -> dict[str, CellContext]:
    """The parent run and one run per cell, recorded in their folders and created here when the store answers
    (else by the first job that reaches it); params logged once. `code`: the snapshot the jobs import."""
    artifacts = plan.root.parent / "mlartifacts"
    common = {
        T.TAG_GRID: plan.grid,
        T.TAG_PRESET: plan.preset,
        T.TAG_CODE_VERSION: code_version(),
        T.TAG_SMOKE: str(plan.smoke).lower(),
    }
    if code:
        common[T.TAG_CODE_SNAPSHOT] = str(code)
    reference = plan.config["preset"]["eval"].get("reference_batch") or f"{plan.config['data']['name']} val split"
    common[T.TAG_REFERENCE] = f"rFID: {plan.config['data']['name']} val; gFID: {reference}"
    T.declare_run(
        uri, plan.root, plan.grid, f"sweep {plan.grid}", dict(common, **{T.TAG_ROLE: "sweep"}), artifact_root=artifacts
    )
    shared_tracking = Tracking(uri, str(plan.root))
    shared_tracking.logger().log_params(T.flatten(plan.config))
    contexts = {SHARED: CellContext(plan.shared, shared_tracking, {}, str(plan.root))}
    estimates = cost_tags(plan)
    for cell in plan.cells:
        tags = dict(
            common,
            **{
                T.TAG_ROLE: "cell",
                T.TAG_CELL: cell.name,
                T.TAG_CELL_ID: cell.cell_id,
                T.TAG_TOKENIZER: cell.tokenizer,
                T.TAG_GENERATOR: str(cell.generator or ""),
            },
        )
        if cell.size:
            tags.update({T.TAG_MODEL_SIZE: cell.size, T.TAG_NUM_TOKENS: str(cell.num_tokens)})
        else:
            tags.update(_size_tags(cell.name))
        tags.update(estimates.get(cell.name, {}))
        cell.run_dir.mkdir(parents=True, exist_ok=True)
        T.declare_run(uri, cell.run_dir, plan.grid, cell.name, tags, parent=plan.root, artifact_root=artifacts)
        tracking = Tracking(uri, str(cell.run_dir))
        tracking.logger().log_params(T.flatten(cell.params))
        contexts[cell.name] = CellContext(cell.tasks, tracking, tags, str(cell.run_dir))
    return contexts


def cost_tags(plan: Plan) -> dict[str, dict[str, str]]:
    """Per cell, the estimate of its training stages on this invocation's cluster (bench.cost) as run tags, which
    the report's cost table shows beside cost_gpu_hours; none where the cluster config states no device."""
    from bench import cost as C

    try:
        device = C.device_from_cluster(plan.config["cluster"])
    except C.CostError:
        return {}
    basis = device.describe()
    return {
        cell: {
            C.TAG_EST_GPU_HOURS: f"{est['cost_est_gpu_hours']:.6g}",
            C.TAG_EST_WALL_HOURS: f"{est['cost_est_wall_hours']:.6g}",
            C.TAG_EST_BASIS: basis,
        }
        for cell, est in C.cell_estimates(plan, device).items()
    }


def _size_tags(name: str) -> dict[str, str]:
    import models

    c = models.resolve(name).config
    return {T.TAG_MODEL_SIZE: c.encoder_size, T.TAG_NUM_TOKENS: str(c.num_latent_tokens)}


# ---- the record of submitted jobs -------------------------------------------------------------------------------
def record_jobs(
    plan: Plan,
    launcher: str,
    jobs: list[tuple[str, list[str]]],
    submitted: dict[str, submitit.Job] | None = None,
    code: str | os.PathLike | None = None,
) -> None:
    """Append (job id, task uids) lines: what status, cancel, clean and the next invocation look at. A local job's
    id is its process id, recorded with the process's identity (`process_identity`): PIDs are recycled.
    `submitted`: job id -> its submitit job, whose log and result file are recorded (bench.status reads how a job
    ended there); `code`: the snapshot the jobs import (bench.clean keeps it while they are queued or running)."""
    with open(plan.root / JOBS_FILE, "a") as f:
        for job_id, keys in jobs:
            record = {"launcher": launcher, "job_id": job_id, "tasks": keys, "time": time.time()}
            if code:
                record["code"] = str(code)
            if job_id in (submitted or {}):
                paths = submitted[job_id].paths
                record.update(log=str(paths.stderr), result=str(paths.result_pickle))
            if launcher == "local":
                record["process"] = process_identity(int(job_id))
            f.write(json.dumps(record) + "\n")


def process_identity(pid: int) -> str | None:
    """`<boot id>/<start time>` of a live process (its start in clock ticks since boot, /proc/<pid>/stat field
    22): the same PID with another identity is another process. None when there is no such process, or it has
    ended and waits for its parent to reap it (a zombie, state Z or X)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 is the first
    return None if fields[0] in "ZX" else f"{boot}/{fields[19]}"


def child_processes(pid: int) -> list[int]:
    """The PIDs of a live process's children (all its threads'); [] when it has ended."""
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    kids = []
    for thread in threads:
        try:
            kids += [int(k) for k in (thread / "children").read_text().split()]
        except OSError:
            pass
    return kids


def recorded_jobs(plan: Plan) -> list[dict]:
    path = plan.root / JOBS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def slurm_states(job_ids: list[str], env: dict | None = None) -> dict[str, str]:
    """job id -> SLURM state (squeue for queued/running jobs, sacct for the rest)."""
    if not job_ids:
        return {}
    states: dict[str, str] = {}
    # -r: one line per array element (pending elements are otherwise folded into one "12_[3-20]" line)
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)], capture_output=True, text=True, env=env
    )
    for line in out.stdout.splitlines():
        jid, state = line.split()[:2]
        states[jid] = state
    missing = [j for j in job_ids if j not in states]
    if missing:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(missing)],
            capture_output=True,
            text=True,
            env=env,
        )
        for line in out.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 2:
                states.setdefault(parts[0], parts[1].split()[0])
    return states


def active_tasks(plan: Plan) -> dict[str, str]:
    """task uid -> job id of a SLURM job of this grid that is still queued or running."""
    records = [r for r in recorded_jobs(plan) if r["launcher"] == "slurm"]
    states = slurm_states([r["job_id"] for r in records])
    active = {}
    for r in records:
        if states.get(r["job_id"], "").split(" ")[0] in ACTIVE_STATES:
            for key in r["tasks"]:
                active[key] = r["job_id"]
    return active


# ---- local ----------------------------------------------------------------------------------------------------
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


# ---- slurm ----------------------------------------------------------------------------------------------------
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


def cancel(plan: Plan) -> list[str]:
    """Cancel this grid's queued/running jobs (SLURM: scancel; local: terminate the job processes)."""
    cancelled = []
    slurm_ids = sorted(set(active_tasks(plan).values()))
    if slurm_ids:
        subprocess.run(["scancel", *slurm_ids], check=False)
        cancelled += slurm_ids
    for r in recorded_jobs(plan):
        if r["launcher"] != "local" or r.get("process") is None or process_identity(int(r["job_id"])) != r["process"]:
            continue  # ended, or the PID now names another process
        # SIGINT: submitit's local controller stops its tasks on it (SIGTERM is forwarded to the task, which
        # ignores it). Its tasks get it first: a controller interrupted while still inside the Popen of a task
        # that already runs (a loaded machine) never learns of that task and would leave it running.
        for pid in [*child_processes(int(r["job_id"])), int(r["job_id"])]:
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        cancelled.append(r["job_id"])
    return cancelled


def flush_buffers(contexts: dict[str, CellContext]) -> int:
    """Replay whatever jobs could not log (tracking outages); returns the number of runs still buffered."""
    left = 0
    for ctx in contexts.values():
        if ctx.tracking and T.pending(ctx.tracking.run_dir):
            left += not ctx.tracking.logger().flush()
    return left
