"""`action=status` reconciles the plan with what runs it: a SIGKILLed local driver's stage reads `ended` with the
reason, its log and what a rerun does, its MLflow run is marked once, and the rerun resumes it to an uninterrupted
run's numbers with each curve point logged once. Also the screen itself (one line per cell, columns apart) and the
states of recorded jobs that are not running (a killed job, a job that raised, a live lock holder)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from bench import launch, status
from bench import tracking as T
from bench.stages.task import LOCK, SPEC
from tests.sweep.test_faults import REPO, kill_driver_when, plan_of, run_of, sweep_command

STAGE1 = ["preset.stage1.loop.steps=30", "preset.stage1.loop.checkpoint_every=5", "preset.stage1.loop.log_every=5"]


def sweep(outputs, *extra, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run(sweep_command(outputs, *STAGE1, *extra), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert not check or r.returncode == 0, r.stdout + r.stderr
    return r


def curves(uri: str, run_id: str) -> dict[tuple[str, int], list[float]]:
    """Each training-curve point's values (a list: a point logged twice has two), wall-clock rates left out."""
    client, points = MlflowClient(uri), {}
    for key in client.get_run(run_id).data.metrics:
        if key.startswith("system/") or key.endswith("steps_per_s"):
            continue
        for m in client.get_metric_history(run_id, key):
            if m.step > 0:
                points.setdefault((key, m.step), []).append(m.value)
    return points


def weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.slow  # three sweeps and two status calls, each importing torch: ~3 min on 2 busy cores
def test_a_killed_driver_then_status_and_a_rerun(tmp_path):
    full = tmp_path / "full"
    sweep(full)
    cut = tmp_path / "cut"
    driver = subprocess.Popen(
        sweep_command(cut, *STAGE1), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    cell = cut / "latent_vs_size" / "TiTok-S-16"
    kill_driver_when(driver, lambda: list(cell.glob("stage1-*/checkpoint.pt")), 300, "stage 1's first checkpoint")

    r = sweep(cut, "action=status", "--json")
    (stage1,) = [s for s in json.loads(r.stdout)["stages"] if s["key"] == "TiTok-S-16/stage1"]
    assert stage1["state"] == "ended" and stage1["reason"] == "driver lost", r.stdout
    assert stage1["step"] and stage1["rerun"] == f"resumes stage1 at step {stage1['step']}"
    assert Path(stage1["log"]).is_file()
    screen = sweep(cut, "action=status").stdout
    assert "TiTok-S-16/stage1: driver lost: local job" in screen and f"log: {stage1['log']}" in screen
    assert f"rerun: resumes stage1 at step {stage1['step']}" in screen

    uri = f"sqlite:///{cut / 'mlflow.db'}"
    run_dir = next(cell.glob("run-*"))
    run = run_of(uri, run_dir)
    assert run.info.status == "KILLED" and run.data.tags[T.TAG_FAILED_STAGE] == "stage1"
    assert "driver lost" in run.data.tags[T.TAG_ERROR] and stage1["log"] in run.data.tags[T.TAG_ERROR]

    rerun = sweep(cut)
    assert "TiTok-S-16/stage1: driver lost" in rerun.stdout  # what the rerun found, before it resumes
    result = json.loads(next(cell.glob("stage1-*/result.json")).read_text())
    assert result["resumed_from"] == stage1["step"]
    run = run_of(uri, run_dir)
    assert run.info.status == "FINISHED" and run.data.tags[T.TAG_STATUS] == "finished"
    assert not set(T.ERROR_TAGS) & set(run.data.tags), run.data.tags
    got = curves(uri, run.info.run_id)
    assert got and all(len(v) == 1 for v in got.values()), "a curve point was logged twice"
    full_uri = f"sqlite:///{full / 'mlflow.db'}"
    want = curves(full_uri, run_of(full_uri, next((full / "latent_vs_size" / "TiTok-S-16").glob("run-*"))).info.run_id)
    assert got == want
    a = weights(next(cell.glob("stage1-*/model.safetensors")))
    b = weights(next((full / "latent_vs_size" / "TiTok-S-16").glob("stage1-*/model.safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (
        sweep(cut, "action=status")
        .stdout.splitlines()[-1]
        .endswith("stages: 2 done, 0 running, 0 queued, 0 ended, 0 todo")
    )


# ---- the states of recorded jobs, without running any ------------------------------------------------------------
def record(plan, task, job_id="4242", launcher="local", **extra):
    plan.root.mkdir(parents=True, exist_ok=True)
    line = {
        "launcher": launcher,
        "job_id": job_id,
        "tasks": [task.uid],
        "time": time.time(),
        "process": "gone/1",
        **extra,
    }
    with open(plan.root / launch.JOBS_FILE, "a") as f:
        f.write(json.dumps(line) + "\n")


def started(task):
    Path(task.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(task.out_dir) / SPEC).write_text("{}")


def test_a_killed_job_reads_killed_and_one_that_raised_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "slurm_states", lambda ids, env=None: {})  # accounting forgot the job
    plan = plan_of(tmp_path)
    teacher = plan.task("_shared/teacher")
    started(teacher)
    log = tmp_path / "job.err"
    log.write_text("submitit INFO: starting\n")
    record(plan, teacher, log=str(log), result=str(tmp_path / "none.pkl"))
    (s,) = [s for s in status.reconcile(plan, mark=False) if s.key == "_shared/teacher"]
    assert (s.state, s.reason, s.rerun) == ("ended", "killed", "runs teacher from the start")
    assert s.log == str(log) and "SIGKILL" in status.reason_text(s)
    with open(tmp_path / "raised.pkl", "wb") as f:
        pickle.dump(("error", "Traceback ...\nValueError: bad"), f)
    record(plan, teacher, job_id="4243", log=str(log), result=str(tmp_path / "raised.pkl"))
    (s,) = [s for s in status.reconcile(plan, mark=False) if s.key == "_shared/teacher"]
    assert (s.state, s.reason, s.job) == ("ended", "failed", "4243")
    with open(tmp_path / "spent.pkl", "wb") as f:  # what submitit raises past the time limit, no requeue left
        pickle.dump(("error", "UncompletedJobError: Job not requeued because: timed-out too many times."), f)
    record(plan, teacher, job_id="4245", launcher="slurm", result=str(tmp_path / "spent.pkl"))
    (s,) = [s for s in status.reconcile(plan, mark=False) if s.key == "_shared/teacher"]
    assert (s.state, s.reason) == ("ended", "TIMEOUT")
    # a cell stage its ended job never started (the job's first): ended, and the rerun runs it after what it reads
    stage1 = plan.task("TiTok-S-16/stage1")
    record(plan, stage1, job_id="4244")
    (s,) = [s for s in status.reconcile(plan, mark=False) if s.key == stage1.key]
    assert (s.state, s.reason, s.rerun) == ("ended", "killed", "runs stage1 from the start after _shared/teacher")


def test_a_live_lock_holder_reads_running(tmp_path):
    plan = plan_of(tmp_path)
    teacher = plan.task("_shared/teacher")
    Path(teacher.out_dir).mkdir(parents=True)
    code = (
        "import sys, time\nfrom bench.core.lock import owner_lock\n"
        "with owner_lock(sys.argv[1], print):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(Path(teacher.out_dir) / LOCK)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        (s,) = [s for s in status.reconcile(plan, mark=False) if s.key == "_shared/teacher"]
        assert s.state == "running" and f"PID {holder.pid}" in s.detail
    finally:
        holder.kill()
        holder.wait()
    (s,) = [s for s in status.reconcile(plan, mark=False) if s.key == "_shared/teacher"]
    assert s.state == "todo"


def test_the_status_screen_keeps_its_columns_apart(tmp_path):
    plan = plan_of(tmp_path, "grid.stages=[stage1,pretokenize,generator,eval_gen]", "grid.num_tokens=[16,32]")
    screen = status.render(plan, status.reconcile(plan, mark=False))
    header = next(line for line in screen.splitlines() if line.strip().startswith("cell"))
    assert "pretokenize " in header and "generator" in header.split("pretokenize")[1]
    assert all(f" {stage} " in header + " " for stage in ("stage1", "pretokenize", "generator", "eval_gen"))


def test_the_plan_screen_keeps_its_columns_apart(tmp_path):
    from bench.plan import describe

    plan = plan_of(tmp_path, "grid.stages=[stage1,pretokenize,generator,eval_gen]")
    header = next(line for line in describe(plan).splitlines() if line.strip().startswith("cell"))
    assert "pretokenizegenerator" not in header and "pretokenize " in header


def test_slurm_ends_are_named_and_their_runs_marked_once(tmp_path, monkeypatch):
    """Each way SLURM ends a job without a result reads as its state in words; the cell's run is marked KILLED
    (cancelled) or FAILED with the reason, once: a later reconcile leaves the run as it finds it."""
    from bench.stages.task import RESULT

    plan = plan_of(tmp_path, "grid.sizes=[S,B]", "grid.num_tokens=[16,32]")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    launch.prepare_tracking(plan, uri)
    teacher = plan.task("_shared/teacher")
    started(teacher)
    (Path(teacher.out_dir) / RESULT).write_text("{}")
    ends = dict(zip((c.name for c in plan.cells), ("CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")))
    for i, cell in enumerate(plan.cells):
        task = next(t for t in cell.tasks if t.stage == "stage1")
        started(task)
        torch.save({"step": 7}, Path(task.out_dir) / "checkpoint.pt")
        record(plan, task, job_id=f"100_{i}", launcher="slurm", log=f"/logs/100_{i}.err")
    monkeypatch.setattr(
        launch, "slurm_states", lambda ids, env=None: {f"100_{i}": state for i, state in enumerate(ends.values())}
    )
    states = {s.key: s for s in status.reconcile(plan)}
    client = MlflowClient(uri)
    for i, cell in enumerate(plan.cells):
        s = states[f"{cell.name}/stage1"]
        assert (s.state, s.reason, s.rerun) == ("ended", ends[cell.name], "resumes stage1 at step 7")
        run = run_of(uri, cell.run_dir)
        assert run.info.status == ("KILLED" if ends[cell.name] == "CANCELLED" else "FAILED")
        assert run.data.tags[T.TAG_ERROR].startswith(f"{ends[cell.name]}: slurm job 100_{i} ")
        assert f"log: /logs/100_{i}.err" in run.data.tags[T.TAG_ERROR]
        client.set_tag(run.info.run_id, T.TAG_ERROR, "left as found")
    screen = status.render(plan, list(states.values()))
    assert "OOM" in screen and "TIMEOUT: slurm job 100_1 ran past its time limit with no requeue left" in screen
    status.reconcile(plan)
    assert all(run_of(uri, c.run_dir).data.tags[T.TAG_ERROR] == "left as found" for c in plan.cells)


def test_a_job_that_ended_before_its_stage_started_reads_ended_and_marks_its_run(tmp_path, monkeypatch):
    """A SLURM job cancelled while queued, and a local job killed before its first stage began (no spec, no
    resume point): each reads `ended` with the reason and marks its cell's run; a later stage of the same job
    stays todo (the job ended on an earlier one)."""
    from bench.stages.task import RESULT

    plan = plan_of(tmp_path, "grid.num_tokens=[16,32]", "grid.stages=[stage1,eval_recon]")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    launch.prepare_tracking(plan, uri)
    teacher = plan.task("_shared/teacher")
    started(teacher)
    (Path(teacher.out_dir) / RESULT).write_text("{}")
    queued, local = plan.cells
    record(plan, plan.task(f"{queued.name}/stage1"), job_id="300", launcher="slurm")
    monkeypatch.setattr(launch, "slurm_states", lambda ids, env=None: {"300": "CANCELLED by 0"})
    tasks = [plan.task(f"{local.name}/{stage}") for stage in ("stage1", "eval_recon")]
    with open(plan.root / launch.JOBS_FILE, "a") as f:
        f.write(json.dumps({"launcher": "local", "job_id": "4246", "tasks": [t.uid for t in tasks]}) + "\n")
    states = {s.key: s for s in status.reconcile(plan)}
    s = states[f"{queued.name}/stage1"]
    assert (s.state, s.reason, s.step, s.rerun) == ("ended", "CANCELLED", None, "runs stage1 from the start")
    s = states[f"{local.name}/stage1"]
    assert (s.state, s.reason, s.rerun) == ("ended", "killed", "runs stage1 from the start")
    s = states[f"{local.name}/eval_recon"]
    assert s.state == "todo" and s.rerun.startswith(f"runs eval_recon from the start after {local.name}/stage1")
    for cell, (mlflow_status, reason) in zip(plan.cells, (("KILLED", "CANCELLED"), ("FAILED", "killed"))):
        run = run_of(uri, cell.run_dir)
        assert run.info.status == mlflow_status and run.data.tags[T.TAG_ERROR].startswith(f"{reason}: "), run
        assert run.data.tags[T.TAG_FAILED_STAGE] == "stage1"


def test_a_job_slurm_killed_for_its_memory_reads_out_of_memory(tmp_path, monkeypatch):
    """SLURM's OverMemoryKill (jobacct_gather, no cgroups) leaves sacct saying FAILED and its own line in the job's
    log: that reads OUT_OF_MEMORY; a FAILED job without the line stays FAILED."""
    plan = plan_of(tmp_path)
    stage1 = plan.task("TiTok-S-16/stage1")
    started(stage1)
    monkeypatch.setattr(launch, "slurm_states", lambda ids, env=None: dict.fromkeys(ids, "FAILED"))
    for job_id, line, reason in (
        ("500", "slurmstepd-vm: error: Exceeded job memory limit", "OUT_OF_MEMORY"),
        ("501", "Traceback ... Segmentation fault", "FAILED"),
    ):
        log = tmp_path / f"{job_id}_0_log.err"
        log.write_text(f"submitit INFO: starting\n{line}\n")
        record(plan, stage1, job_id=job_id, launcher="slurm", log=str(log))
        states = status.reconcile(plan, mark=False)
        (s,) = [s for s in states if s.key == stage1.key]
        assert (s.state, s.reason) == ("ended", reason)
    screen = status.render(plan, states)
    assert "FAILED: slurm job 501 exited with an error" in screen


def test_a_running_stage_shows_the_latest_step_it_reached(tmp_path, monkeypatch):
    """A running stage shows the newest of its progress and its last logged curve point, not its resume point's
    step, which stays what a rerun resumes from."""
    plan = plan_of(tmp_path)
    stage1 = plan.task("TiTok-S-16/stage1")
    started(stage1)
    out = Path(stage1.out_dir)
    torch.save({"step": 4}, out / "checkpoint.pt")
    (out / "progress.json").write_text(json.dumps({"step": 6, "wall_s": 1.0, "lost_s": 0.0}))
    (out / ".logged_step").write_text("8\n")
    record(plan, stage1, job_id="600", launcher="slurm")
    monkeypatch.setattr(launch, "slurm_states", lambda ids, env=None: {"600": "RUNNING"})
    states = status.reconcile(plan, mark=False)
    (s,) = [s for s in states if s.key == stage1.key]
    assert (s.state, s.step, s.reached) == ("running", 4, 8)
    screen = status.render(plan, states)
    assert f"run 8/{s.steps}" in screen and f"at step 8/{s.steps}; resume point at step 4/{s.steps}" in screen
