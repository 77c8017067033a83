"""Faults a sweep must survive, each made for real: a job preempted through submitit's own requeue
(USR2), a process SIGKILLed, a tracking server stopped, a torn buffer file, a recycled PID. Each checks the
guarantee it breaks: a run's status is the truth after preemptions, a stage counts as done only once its metrics are
logged or buffered, no transient error duplicates a run, the buffer is append-only and tolerant of a torn tail, a
sweep starts during an outage and its metrics arrive later, a stage folder has one owner at a time and no local job
outlives its driver, cancel signals only its own processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from bench import launch
from bench import tracking as T
from bench.plan import make_plan
from bench.stages import Tracking
from bench.sweep import SWEEPS

REPO = Path(__file__).resolve().parents[2]
# the teacher trained in the run (the preset ships one): the stage these tests kill, resume and share
TEACHER = [
    "preset.teacher.source=train",
    "preset.teacher.loop.steps=16",
    "preset.teacher.loop.checkpoint_every=2",
    "preset.teacher.loop.log_every=2",
    "preset.teacher.loop.batch_size=4",
    "data.train_images=32",
    "data.val_images=20",
]


def plan_of(outputs, *overrides):
    with initialize_config_dir(str(SWEEPS), version_base=None):
        cfg = compose(
            "sweep", overrides=["grid.sizes=[S]", "grid.num_tokens=[16]", *TEACHER, *overrides, f"outputs={outputs}"]
        )
    return make_plan(cfg)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store for the module (creating one costs ~10 s of migrations); each test has its own runs."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    T.ensure_experiment(uri, "latent_vs_size")
    return uri


LOADED = 3  # timeouts are bounds for an idle machine; a CI box running other work may be this much slower


def wait_for(predicate, timeout: float, what: str):
    timeout *= LOADED
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)
    return value


def run_of(uri: str, folder) -> MlflowClient.get_run:
    return MlflowClient(uri).get_run(json.loads((Path(folder) / T.RUN_ID_FILE).read_text())["run_id"])


# ---- 1. preemption is not failure ----------------------------------------------------------------------------------
@pytest.mark.slow  # two job starts importing torch: ~45 s on 2 busy cores
def test_a_preempted_stage_ends_finished_without_an_error_tag(tmp_path, store):
    """submitit's requeue is a SystemExit inside the job: the run must not be marked FAILED for it, and once the
    resumed job finishes the run is FINISHED with no error tag."""
    plan, uri = plan_of(tmp_path), store
    contexts = launch.prepare_tracking(plan, uri)
    teacher = plan.task("_shared/teacher")
    ctx = launch.CellContext([teacher], contexts["_shared"].tracking, {}, str(plan.root))
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(timeout_min=60 * 24)  # USR2 early on: a preemption
    job = executor.submit(launch.StageJob([teacher], {"_shared": ctx}, threads=1))
    checkpoint = Path(teacher.out_dir) / "checkpoint.pt"
    wait_for(checkpoint.exists, 60, "the teacher's first checkpoint")
    (task,) = launch.child_processes(int(job.job_id))
    os.kill(task, signal.SIGUSR2)  # what SLURM sends before preempting: submitit checkpoints and requeues
    wait_for(lambda: launch.child_processes(int(job.job_id)) not in ([], [task]), 30, "the requeued job")
    # while requeued the run is not FAILED
    assert run_of(uri, plan.root).info.status != "FAILED"
    job.result()
    result = teacher.result()
    assert result["resumed_from"] > 0  # it was requeued, not run from scratch
    run = run_of(uri, plan.root)
    assert run.info.status == "FINISHED"
    assert not set(T.ERROR_TAGS) & set(run.data.tags), run.data.tags


# ---- 2. a stage is done only once its metrics are logged or buffered ----------------------------------------------
KILL_AT_RESULT = """
import sys
from bench.stages import Tracking, run_task
from tests.sweep.test_faults import plan_of
plan = plan_of(sys.argv[1], "preset.teacher.loop.steps=2")
run_task(plan.task("_shared/teacher"), Tracking(sys.argv[2], str(plan.root)))
"""


@pytest.mark.slow  # a job importing torch: ~20 s on 2 busy cores
def test_a_job_killed_as_its_stage_is_done_has_logged_it(tmp_path, store):
    """SIGKILL the moment result.json appears: what the stage logs (its device tag, its spec artifact) is already
    in the store or in the buffer."""
    plan = plan_of(tmp_path, "preset.teacher.loop.steps=2")
    launch.prepare_tracking(plan, store)
    result = Path(plan.task("_shared/teacher").out_dir) / "result.json"
    proc = subprocess.Popen([sys.executable, "-c", KILL_AT_RESULT, str(tmp_path), store], cwd=REPO)
    try:
        wait_for(lambda: result.exists() or proc.poll() is not None, 120, "the stage's result")
        proc.kill()
    finally:
        proc.wait()
    assert result.exists()
    Tracking(store, str(plan.root)).logger().flush()
    run = run_of(store, plan.root)
    assert T.TAG_DEVICE in run.data.tags
    assert [a.path for a in MlflowClient(store).list_artifacts(run.info.run_id, "specs/teacher")]


# ---- 3. transient errors: no duplicated run, nothing held back, no stalled training -------------------------------
def test_a_stopped_server_never_duplicates_a_run(tmp_path, mlflow_server):
    uri = mlflow_server.uri
    run_id = T.declare_run(uri, tmp_path, "faults-dup", "cell", {"k": "v"})
    mlflow_server.stop()
    try:
        assert T.declare_run(uri, tmp_path, "faults-dup", "cell", {"k": "v"}) == run_id  # kept, not replaced
    finally:
        mlflow_server.start()
        T.OUTAGES.answered(uri)
    assert T.declare_run(uri, tmp_path, "faults-dup", "cell", {"k": "v"}) == run_id
    exp = MlflowClient(uri).get_experiment_by_name(T.experiment_name("faults-dup"))
    assert [r.info.run_id for r in MlflowClient(uri).search_runs([exp.experiment_id])] == [run_id]


def test_a_run_missing_from_the_store_is_replaced(tmp_path, store):
    """The store's definite "no such run" (it was reset, or is another store) is the one case for a new run."""
    first = T.declare_run(store, tmp_path, "latent_vs_size", "cell", {})
    MlflowClient(store).delete_run(first)
    MlflowClient(store)._tracking_client.store._hard_delete_run(first)  # gone from the store, as after a reset
    assert T.declare_run(store, tmp_path, "latent_vs_size", "cell", {}) not in (None, first)


def test_a_refused_entry_does_not_block_the_entries_after_it(tmp_path, store, caplog):
    T.declare_run(store, tmp_path, "latent_vs_size", "cell", {})
    logger = T.RunLogger(store, tmp_path)
    with caplog.at_level(logging.WARNING):
        logger.set_tags({"x" * 300: "too long a key"})  # refused for good (400)
    logger.log_metrics({"after": 1.0}, step=1)
    assert logger.flush()
    assert run_of(store, tmp_path).data.metrics == {"after": 1.0}
    assert "refused" in caplog.text


def test_an_outage_costs_a_training_loop_little_and_loses_nothing(tmp_path, mlflow_server):
    uri = mlflow_server.uri
    T.declare_run(uri, tmp_path, "faults-outage", "cell", {})
    logger = T.RunLogger(uri, tmp_path)
    mlflow_server.stop()
    try:
        t0 = time.monotonic()
        for step in range(200):
            logger.log_metrics({"loss": 1.0 / (step + 1)}, step)
        assert time.monotonic() - t0 < 5  # one failed request per backoff window, not seconds per call
        assert T.pending(tmp_path)
    finally:
        mlflow_server.start()
    assert logger.flush() and not T.pending(tmp_path)
    history = MlflowClient(uri).get_metric_history(logger.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(200))


# ---- 4. the buffer: a torn tail, a kill mid-replay ----------------------------------------------------------------
def test_a_torn_buffer_line_is_skipped_with_a_warning(tmp_path, mlflow_server, caplog):
    uri = mlflow_server.uri
    T.declare_run(uri, tmp_path, "faults-torn", "cell", {})
    logger = T.RunLogger(uri, tmp_path)
    mlflow_server.stop()
    try:
        logger.log_metrics({"a": 1.0}, 1)
        logger.log_metrics({"b": 2.0}, 1)
        buffer = tmp_path / T.BUFFER_FILE
        buffer.write_bytes(buffer.read_bytes()[:-7])  # what a writer killed mid-line leaves
        T.OUTAGES.retry_now(uri)
        logger.log_metrics({"c": 3.0}, 1)  # appended after the torn line, never joined to it
    finally:
        mlflow_server.start()
    with caplog.at_level(logging.WARNING):
        assert logger.flush()
    assert set(MlflowClient(uri).get_run(logger.run_id).data.metrics) == {"a", "c"}
    assert f"{tmp_path / T.BUFFER_FILE}: skipping a torn entry" in caplog.text


REPLAY = """
import sys
from bench import tracking as T
T.RunLogger(sys.argv[1], sys.argv[2]).flush()
"""


def test_a_kill_during_replay_loses_and_repeats_nothing(tmp_path, store):
    """SIGKILL a process replaying a long buffer: the buffer is never rewritten, and the next replay sends exactly
    what the store has not taken (at most the one entry in flight when the kill came twice)."""
    T.declare_run(store, tmp_path, "latent_vs_size", "cell", {})
    lines = [
        json.dumps({"op": "metrics", "metrics": {"m": float(i)}, "step": i, "ts": 1000 + i}) + "\n" for i in range(400)
    ]
    (tmp_path / T.BUFFER_FILE).write_text("".join(lines))
    proc = subprocess.Popen([sys.executable, "-c", REPLAY, store, str(tmp_path)], cwd=REPO)
    try:
        wait_for(lambda: (tmp_path / T.ACKED_FILE).exists() or proc.poll() is not None, 60, "the replay to start")
        proc.kill()
    finally:
        proc.wait()
    assert (tmp_path / T.BUFFER_FILE).read_text() == "".join(lines)  # append-only: never truncated
    assert T.RunLogger(store, tmp_path).flush()
    steps = sorted(m.step for m in MlflowClient(store).get_metric_history(run_of(store, tmp_path).info.run_id, "m"))
    assert set(steps) == set(range(400)) and len(steps) <= 401


# ---- 5. a server down when the sweep starts -----------------------------------------------------------------------
def test_a_sweep_starts_while_the_server_is_down_and_its_metrics_arrive_later(tmp_path, mlflow_server):
    uri = mlflow_server.uri
    plan = plan_of(tmp_path, "grid.sizes=[S,B]")
    mlflow_server.stop()
    try:
        t0 = time.monotonic()
        contexts = launch.prepare_tracking(plan, uri)
        cell = contexts[plan.cells[0].name]
        cell.tracking.logger().log_metrics({"rfid": 12.5})
        assert time.monotonic() - t0 < 15, "the driver stalled on the dead server"
        assert launch.flush_buffers(contexts) == len(contexts)  # everything still buffered
    finally:
        mlflow_server.start()
    assert launch.flush_buffers(contexts) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(T.experiment_name(plan.grid))
    sweep_run = run_of(uri, plan.root)
    cells = client.search_runs([exp.experiment_id], f"tags.`{T.TAG_ROLE}` = 'cell'")
    mine = [r for r in cells if r.data.tags.get("mlflow.parentRunId") == sweep_run.info.run_id]
    assert sorted(r.data.tags[T.TAG_CELL] for r in mine) == sorted(c.name for c in plan.cells)
    assert run_of(uri, cell.dir).data.metrics == {"rfid": 12.5}
    assert run_of(uri, cell.dir).data.params  # the params logged while the server was down
    launch.prepare_tracking(plan, uri)  # a rerun reuses every run
    assert len(client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep_run.info.run_id}'")) == 2


# ---- 6. one owner per stage folder; no job outlives its driver ----------------------------------------------------
RUN_STAGE = """
import sys
from bench.stages import Tracking, run_task
from tests.sweep.test_faults import plan_of
plan = plan_of(sys.argv[1])
run_task(plan.task("_shared/teacher"), Tracking(sys.argv[2], str(plan.root)))
"""


def start_stage(outputs, uri) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUN_STAGE, str(outputs), uri], cwd=REPO, stderr=subprocess.PIPE, text=True
    )


def stepped_metrics(uri: str, run_id: str) -> list[tuple[str, int]]:
    """(metric, step) of every training-curve point in a run (final metrics are step 0)."""
    client = MlflowClient(uri)
    return [
        (key, m.step)
        for key in client.get_run(run_id).data.metrics
        for m in client.get_metric_history(run_id, key)
        if m.step > 0
    ]


def test_two_sqlite_clients_creating_a_fresh_store_at_once_both_succeed(tmp_path):
    """Opening a sqlite store that is not there yet runs its migrations: two processes at once used to race in
    alembic (`table experiments already exists`), one of them dying."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = "import sys\nfrom bench import tracking as T\nT.client(sys.argv[1]).search_experiments()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, uri], cwd=REPO, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(errors)


@pytest.mark.slow  # two jobs importing torch: ~30 s on 2 busy cores
def test_two_jobs_on_one_stage_train_it_once_and_log_it_once(tmp_path, store):
    plan = plan_of(tmp_path)
    launch.prepare_tracking(plan, store)
    procs = [start_stage(tmp_path, store) for _ in range(2)]
    errors = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(errors)
    assert sum("another process" in e and "owns this stage" in e for e in errors) <= 1
    points = stepped_metrics(store, run_of(store, plan.root).info.run_id)
    assert points and len(points) == len(set(points)), "a training curve was logged twice"
    assert plan.task("_shared/teacher").result()["resumed_from"] == 0  # trained once, from scratch


@pytest.mark.slow  # two jobs importing torch: ~30 s on 2 busy cores
def test_a_stage_owner_killed_mid_training_leaves_the_stage_to_the_next(tmp_path, store):
    """SIGKILL whichever of two jobs owns the stage once it has checkpointed: the kernel drops its lock, and the
    other job (waiting for it, or starting after) resumes from the checkpoint and finishes the stage."""
    plan = plan_of(tmp_path)
    launch.prepare_tracking(plan, store)
    teacher = plan.task("_shared/teacher")
    lock, checkpoint = Path(teacher.out_dir) / ".owner.lock", Path(teacher.out_dir) / "checkpoint.pt"
    procs = {p.pid: p for p in (start_stage(tmp_path, store) for _ in range(2))}
    try:
        wait_for(checkpoint.exists, 120, "the owner's first checkpoint")
        owner = int(lock.read_text())
        os.kill(owner, signal.SIGKILL)
        procs[owner].wait()
        (other,) = set(procs) - {owner}
        assert procs[other].wait(timeout=240) == 0, procs[other].stderr.read()
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    result = teacher.result()
    assert result["resumed_from"] > 0


def sweep_command(outputs, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.sweep",
        "grid.sizes=[S]",
        "grid.num_tokens=[16]",
        "grid.stages=[stage1]",
        *TEACHER,
        "preset.teacher.loop.steps=4",
        "preset.stage1.loop.steps=4",
        "preset.stage1.loop.log_every=2",
        "preset.stage1.loop.batch_size=4",
        f"outputs={outputs}",
        *extra,
    ]


@pytest.mark.slow  # two sweeps, each a driver and two jobs importing torch: ~90 s on 2 busy cores
def test_two_sweeps_started_at_once_on_a_fresh_folder_duplicate_nothing(tmp_path):
    procs = [
        subprocess.Popen(sweep_command(tmp_path), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outs)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(T.experiment_name("latent_vs_size"))
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags[T.TAG_ROLE] for r in runs) == ["cell", "sweep"]  # one run each, not two
    for run in runs:
        points = stepped_metrics(uri, run.info.run_id)
        assert points and len(points) == len(set(points)), f"a training curve of {run.info.run_name} logged twice"
    cell = next(r for r in runs if r.data.tags[T.TAG_ROLE] == "cell")
    assert cell.info.status == "FINISHED" and cell.data.tags[T.TAG_STATUS] == "finished"


def alive(pid: int) -> bool:
    return launch.process_identity(pid) is not None  # a zombie has ended


def end(*pids: int) -> None:
    """A failed test leaves no trainer running for hours."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow  # a driver and a job importing torch: ~30 s on 2 busy cores
def test_a_killed_driver_leaves_no_job_running(tmp_path, store):
    """SIGKILL the local driver while its job trains: submitit's controller would live on, and so its job, training
    unobserved (and, before stage locks, beside the rerun's trainer); the job ends itself within seconds."""
    driver = subprocess.Popen(
        sweep_command(tmp_path, "preset.teacher.loop.steps=100000", f"tracking_uri={store}"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = tmp_path / "latent_vs_size" / "_shared"
    kill_driver_when(driver, lambda: list(started.glob("teacher-*/spec.json")), 120, "the job to start its stage")


def kill_driver_when(driver: subprocess.Popen, ready, timeout: float, what: str) -> None:
    """Once `ready()`, SIGKILL the local sweep driver; its controller and job must then end within seconds."""
    try:
        wait_for(lambda: ready() or driver.poll() is not None, timeout, what)
        assert driver.poll() is None, "the sweep ended before it could be killed"
        (controller,) = launch.child_processes(driver.pid)
        (job,) = launch.child_processes(controller)
    finally:
        driver.kill()
        driver.wait()
    try:
        wait_for(lambda: not alive(job) and not alive(controller), 10, "the driver's job to end")
    finally:
        end(job, controller)


@pytest.mark.slow  # a job importing torch: ~20 s on 2 busy cores
def test_a_killed_controller_leaves_no_job_running(tmp_path, store):
    """SIGKILL a recorded local job (submitit's controller, the PID in jobs.jsonl): its task ends too."""
    plan = plan_of(tmp_path, "preset.teacher.loop.steps=100000")
    contexts = launch.prepare_tracking(plan, store)
    teacher = plan.task("_shared/teacher")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(timeout_min=60)
    me = (os.getpid(), launch.process_identity(os.getpid()))
    job = executor.submit(launch.StageJob([teacher], contexts, threads=1, driver=me))
    (task,) = wait_for(lambda: launch.child_processes(int(job.job_id)), 30, "the job's task")
    wait_for((Path(teacher.out_dir) / "spec.json").exists, 120, "the job to start its stage")
    os.kill(int(job.job_id), signal.SIGKILL)
    try:
        wait_for(lambda: not alive(task), 10, "the job's task to end")
    finally:
        end(task)


# ---- 7. cancel signals only its own processes ---------------------------------------------------------------------
def test_cancel_spares_a_process_that_took_a_recorded_pid(tmp_path):
    plan = plan_of(tmp_path)
    plan.root.mkdir(parents=True, exist_ok=True)
    gone = subprocess.Popen(["sleep", "0"])
    gone.wait()
    stand_in = subprocess.Popen(["sleep", "60"])
    try:
        # the record of an ended job whose PID the stand-in now holds: same PID, another start time
        record = {
            "launcher": "local",
            "job_id": str(stand_in.pid),
            "tasks": ["x"],
            "time": time.time(),
            "process": launch.process_identity(stand_in.pid).rsplit("/", 1)[0] + "/1",
        }
        (plan.root / launch.JOBS_FILE).write_text(json.dumps(record) + "\n")
        assert launch.cancel(plan) == []
        time.sleep(0.5)
        assert stand_in.poll() is None, "cancel killed a process that is not its job"
    finally:
        stand_in.kill()
        stand_in.wait()


def test_cancel_stops_a_recorded_local_job(tmp_path):
    plan = plan_of(tmp_path)
    plan.root.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(timeout_min=60)
    job = executor.submit(time.sleep, 120)
    launch.record_jobs(plan, "local", [(job.job_id, ["x"])])
    (task,) = wait_for(lambda: launch.child_processes(int(job.job_id)), 30, "the job's task")
    # cancel signals the task too: a controller interrupted inside its Popen never learns of the task (a loaded
    # CI machine once left this bare sleep running for its full 120 s)
    assert launch.cancel(plan) == [job.job_id]
    # alive(), not /proc: a task whose controller died before reaping it stays a zombie until PID 1 reaps it (a
    # container's init may never do so; CI, 2026-12-03)
    wait_for(lambda: not alive(task) and job.done(), 15, "the job to end")


# ---- 12. a killed job's FAILED line and run -----------------------------------------------------------------------
def test_a_killed_job_is_reported_killed_and_its_run_failed(tmp_path, store, capsys):
    """The local driver's FAILED line says the job was killed, and the driver marks the run the job could not:
    FAILED at its first unfinished stage, not RUNNING for ever."""
    plan = plan_of(tmp_path)
    contexts = launch.prepare_tracking(plan, store)
    teacher = plan.task("_shared/teacher")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(timeout_min=60)
    job = executor.submit(time.sleep, 120)  # stands in for the teacher's job: what is killed is a job's task
    (task,) = wait_for(lambda: launch.child_processes(int(job.job_id)), 30, "the job's task")
    time.sleep(1)  # submitit has started the job
    os.kill(task, signal.SIGKILL)
    wait_for(job.done, 15, "the job to end")
    assert launch.report_ended(job, [teacher], contexts, 1.0) is False
    line = capsys.readouterr().err
    assert "FAILED _shared" in line and "killed" in line and "SIGKILL" in line, line
    run = run_of(store, plan.root)
    assert run.info.status == "FAILED"
    assert run.data.tags[T.TAG_STATUS] == "failed" and run.data.tags[T.TAG_FAILED_STAGE] == "teacher"
    assert "SIGKILL" in run.data.tags[T.TAG_ERROR] and str(job.paths.stderr) in run.data.tags[T.TAG_ERROR]


# ---- launcher=slurm without SLURM --------------------------------------------------------------------------------
def test_slurm_without_sbatch_is_one_line_and_creates_no_run(tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    r = subprocess.run(
        [sys.executable, "-m", "bench.sweep", "grid=latent_vs_size", "launcher=slurm", f"outputs={tmp_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "sbatch" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "mlflow.db").exists()


# ---- 13. ranks waiting on another job's stage lock are not inside a collective -----------------------------------
HOLD_THEN_FINISH = """
import json, sys, time
from pathlib import Path
from bench.core.lock import owner_lock
out, release = Path(sys.argv[1]), Path(sys.argv[2])
with owner_lock(out / ".owner.lock", print):
    print("held", flush=True)
    while not release.exists():
        time.sleep(0.1)
    (out / "result.json").write_text(json.dumps({"metrics": {"x": 1.0}}))
"""


def _rank_waiting_on_a_held_stage(rank, world, port, outputs):
    import datetime

    import torch.distributed as dist

    from bench.stages import run_task
    from tests.distributed import join

    join(rank, world, port)
    # a process-group timeout far shorter than the other job's hold: a rank waiting inside a collective fails
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=3))
    task = plan_of(outputs).task("_shared/teacher")
    (Path(outputs) / f"ready-{rank}").touch()
    assert run_task(task)["metrics"] == {"x": 1.0}
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned ranks importing torch: ~40 s on 2 busy cores
def test_ranks_waiting_on_a_held_stage_lock_wait_outside_a_collective(tmp_path):
    """Another job owns the stage for longer than the ranks' process-group timeout: rank 0 polls the lock and every
    rank hears each try through a short collective, so none times out; once the owner finishes, all skip it."""
    import threading

    from tests.distributed import spawn

    out = Path(plan_of(tmp_path).task("_shared/teacher").out_dir)
    out.mkdir(parents=True)
    release = tmp_path / "release"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THEN_FINISH, str(out), str(release)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )

    def release_later():  # 8 s after both ranks reach the stage
        wait_for(
            lambda: all((tmp_path / f"ready-{r}").exists() for r in (0, 1)) or holder.poll() is not None,
            200,
            "the ranks",
        )
        time.sleep(8)
        release.touch()

    try:
        assert holder.stdout.readline().strip() == "held"
        threading.Thread(target=release_later, daemon=True).start()
        spawn(_rank_waiting_on_a_held_stage, 2, str(tmp_path))
    finally:
        release.touch()
        holder.kill()
        holder.wait()
