"""The tiny sweep on a real single-node SLURM cluster, logging to a real `mlflow server`, on four of its 21
cells (two sizes x two K: shared stages, several cells and job arrays; all 21 took 40 of CI's 90 minutes and test
nothing four do not): every cell finishes; a job preempted mid-training is requeued and resumes from its checkpoint
into the same MLflow run, which ends FINISHED without an error tag; the tracking server is down when the sweep starts
and comes back mid-sweep, and no metric is lost; a second sweep started beside the first submits nothing and
duplicates no run or metric. Jobs SLURM ends without a result (scancel, a time limit with no requeue left, its
memory limit) are named by `action=status`, marked in their runs, and resumed by a rerun. (`nox -s slurm` runs this
with the cluster and server started by tests/infra.)"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from bench import tracking as T

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slurm
FOUR_CELLS = ["grid.sizes=[S,B]", "grid.num_tokens=[16,64]"]


def sweep(*args, outputs, uri, timeout=600, env=None, grid="latent_vs_size"):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.sweep",
            f"grid={grid}",
            "launcher=slurm",
            "cluster=local",
            f"outputs={outputs}",
            f"tracking_uri={uri}",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def squeue() -> list[tuple[str, str, str]]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%j"], capture_output=True, text=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]


def jobs_of(outputs: Path) -> dict[str, str]:
    """task uid (`cell/stage-identity`, its folder under the grid's) -> job id, from the sweep's record."""
    lines = (outputs / "latent_vs_size" / "jobs.jsonl").read_text().splitlines()
    return {key: r["job_id"] for r in map(json.loads, lines) for key in r["tasks"]}


def states(jid: str) -> list[str]:
    return subprocess.run(
        ["sacct", "-n", "-D", "-X", "-P", "-o", "State", "-j", jid], capture_output=True, text=True
    ).stdout.split()


def preempt(jid: str, wait_s: float = 60) -> bool:
    """USR2 to a running job (what SLURM sends before preempting it or at its time limit); True once the job was
    requeued. scancel's exit status cannot tell: slurmctld may deliver the signal and still answer "Job can not
    be altered now" while the job requeues itself, and scancel then retries for a minute or more."""
    signal = subprocess.Popen(["scancel", "--signal=USR2", jid], stderr=subprocess.DEVNULL)
    deadline = time.time() + wait_s
    try:
        while time.time() < deadline:
            if "REQUEUED" in states(jid):
                return True
            time.sleep(1)
        return False
    finally:
        signal.kill()
        signal.wait()


def test_tiny_sweep_on_slurm(slurm_cluster, mlflow_server, tmp_path):
    outputs = tmp_path / "outputs"
    uri = mlflow_server.uri
    mlflow_server.stop()  # down when the sweep starts: it must still run, buffering everything
    out = sweep(*FOUR_CELLS, outputs=outputs, uri=uri)
    assert "submitted" in out and "aftercorr" in out
    # a second sweep beside the first (its jobs queued or running) submits nothing
    assert "submitted 0 jobs" in sweep(*FOUR_CELLS, outputs=outputs, uri=uri)
    grid_dir = outputs / "latent_vs_size"
    keys = jobs_of(outputs)

    # 1. preempt one stage-1 job after its first checkpoint: submitit requeues it, it resumes
    preempted = None
    deadline = time.time() + 900
    while preempted is None and time.time() < deadline:
        running = {jid for jid, state, _ in squeue() if state == "RUNNING"}
        for key, jid in keys.items():
            stage_dir = grid_dir / key if key.split("/")[1].startswith("stage1-") else None
            if (
                jid in running
                and stage_dir
                and (stage_dir / "checkpoint.pt").exists()
                and not (stage_dir / "result.json").exists()
            ):
                if preempt(jid):
                    preempted = (key, jid, stage_dir)
                    break
        time.sleep(0.3)
    assert preempted, "no stage-1 job was caught running after a checkpoint"

    # 2. the tracking server comes back in the middle of the sweep
    mlflow_server.start()

    # 3. wait for the grid's jobs to end
    ids = set(jobs_of(outputs).values())
    while time.time() < deadline + 1800 and any(jid in ids for jid, _, _ in squeue()):
        time.sleep(5)
    assert not any(jid in ids for jid, _, _ in squeue()), "jobs still queued after the time limit"

    # every cell finished, every stage recorded (cell/stage -> result: each stage ran with one set of settings)
    results = {
        f"{r['cell']}/{r['stage']}": r for r in (json.loads(p.read_text()) for p in grid_dir.glob("*/*/result.json"))
    }
    cells = [d for d in grid_dir.iterdir() if d.is_dir() and d.name.startswith("TiTok-")]
    assert len(cells) == 4
    for cell in cells:
        for stage in ("stage1", "pretokenize", "generator", "eval_recon", "eval_gen", "probe", "speed"):
            assert f"{cell.name}/{stage}" in results, f"{cell.name}/{stage} has no result"

    # the preempted stage resumed from its checkpoint (the job was requeued, not rerun from scratch)
    key, jid, stage_dir = preempted
    assert json.loads((stage_dir / "result.json").read_text())["resumed_from"] > 0
    resumed = [k for k, r in results.items() if k.endswith("/stage1") and r["resumed_from"] > 0]
    assert resumed == [f"{stage_dir.parent.name}/stage1"], resumed  # and no other job was preempted
    assert "REQUEUED" in states(jid) and "COMPLETED" in states(jid), states(jid)

    # 4. MLflow: one finished run per cell, all in one experiment, nothing lost in the outage
    sweep(*FOUR_CELLS, outputs=outputs, uri=uri)  # also flushes anything still buffered
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(T.experiment_name("latent_vs_size"))
    runs = client.search_runs([exp.experiment_id], f"tags.`{T.TAG_ROLE}` = 'cell'", max_results=1000)
    assert len(runs) == 4 and len({r.data.tags[T.TAG_CELL] for r in runs}) == 4
    for run in runs:
        cell_dir = grid_dir / run.data.tags[T.TAG_CELL]
        (run_dir,) = cell_dir.glob("run-*")  # the cell's run record
        assert json.loads((run_dir / T.RUN_ID_FILE).read_text())["run_id"] == run.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags[T.TAG_STATUS] == "finished"
        assert not set(T.ERROR_TAGS) & set(run.data.tags), (run.data.tags[T.TAG_CELL], run.data.tags)  # preempted too
        assert run.data.tags[T.TAG_WEIGHTS_RANDOM] == "true" and run.data.tags[T.TAG_SMOKE] == "true"
        for stage in ("eval_recon", "eval_gen", "probe", "speed"):
            for name, value in results[f"{cell_dir.name}/{stage}"]["metrics"].items():
                if isinstance(value, (int, float)):
                    assert run.data.metrics[name] == pytest.approx(value), (run.data.tags[T.TAG_CELL], name)
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "stage1/ce"))
        (stage1_dir,) = cell_dir.glob("stage1-*")
        loop = json.loads((stage1_dir / "spec.json").read_text())["spec"]["loop"]
        expected = list(range(loop["log_every"], loop["steps"] + 1, loop["log_every"]))
        if stage1_dir == preempted[2]:  # the steps between its last checkpoint and the preemption ran twice
            steps = sorted(set(steps))
        assert steps == expected, f"{run.data.tags[T.TAG_CELL]}: stage1/ce logged at {steps}"  # each step once
        assert not T.pending(run_dir)  # the buffer is append-only: what counts is what the store has not taken

    # 5. a second invocation submits nothing
    assert "submitted 0 jobs" in sweep(*FOUR_CELLS, outputs=outputs, uri=uri)


# the rehearsal's 256 px networks and eight DataLoader workers come near cluster=local's 2 GB, which the cluster
# enforces (tests/infra/slurm.py)
REHEARSAL_MEMORY = "cluster.mem_gb=4"


def test_rehearsal_on_slurm(slurm_cluster, mlflow_server, rehearsal_files, tmp_path):
    """The paper path's rehearsal (preset=rehearsal, an ImageNet-layout tree, the weights cache: test_rehearsal.py)
    through the cluster: one cell, every stage, each in its SLURM job, logged to the server."""
    from tests.sweep.test_rehearsal import ONE_CELL, stage_results

    outputs = tmp_path / "outputs"
    out = sweep(
        "preset=rehearsal",
        "data=imagenet",
        f"data.root={rehearsal_files.imagenet}",
        "data.num_classes=4",
        REHEARSAL_MEMORY,
        *ONE_CELL,
        "wait=true",
        outputs=outputs,
        uri=mlflow_server.uri,
        timeout=1800,
        env=rehearsal_files.env,
    )
    assert "all jobs ended; 0 stages unfinished" in out, out
    results = stage_results(outputs, "latent_vs_size", "TiTok-S-32")
    assert set(results) == {"stage1", "pretokenize", "generator", "eval_recon", "eval_gen", "probe", "speed"}
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(T.experiment_name("latent_vs_size"))
    [run] = [
        r
        for r in client.search_runs([exp.experiment_id], f"tags.`{T.TAG_ROLE}` = 'cell'")
        if r.data.tags[T.TAG_PRESET] == "rehearsal"
    ]
    assert run.info.status == "FINISHED" and len(run.data.tags[T.weights_tag("MaskGIT-VQGAN", "sha256")]) == 64
    assert {"rfid", "gfid", "probe_top1", "samples_per_s"} <= set(run.data.metrics)


def test_single_stage_rehearsal_on_slurm(slurm_cluster, mlflow_server, rehearsal_files, tmp_path):
    """grid=single_stage's rehearsal (test_rehearsal.py) through the cluster: one VQ cell, every stage it can list,
    each in its SLURM job, logged to the server."""
    from tests.sweep.test_rehearsal import SINGLE_STAGE_CELL, SINGLE_STAGE_STAGES, stage_results

    outputs = tmp_path / "outputs"
    out = sweep(
        "preset=rehearsal",
        "data=imagenet",
        f"data.root={rehearsal_files.imagenet}",
        "data.num_classes=4",
        REHEARSAL_MEMORY,
        *SINGLE_STAGE_CELL,
        "wait=true",
        outputs=outputs,
        uri=mlflow_server.uri,
        timeout=1800,
        env=rehearsal_files.env,
        grid="single_stage",
    )
    assert "all jobs ended; 0 stages unfinished" in out, out
    assert set(stage_results(outputs, "single_stage", "TiTok-BL-64-VQ")) == SINGLE_STAGE_STAGES
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(T.experiment_name("single_stage"))
    [run] = client.search_runs([exp.experiment_id], f"tags.`{T.TAG_ROLE}` = 'cell'")
    assert run.info.status == "FINISHED" and len(run.data.tags[T.weights_tag("convnext-small", "sha256")]) == 64
    assert {"rfid", "gfid", "samples_per_s"} <= set(run.data.metrics)


# ~2 min of training on a 2-core CPU: long enough to be caught after a checkpoint and to outlive a one-minute time
# limit (slurmctld enforces limits and sends their signals on a 30 s tick)
ONE_STAGE = [
    "grid.sizes=[S]",
    "grid.num_tokens=[16]",
    "grid.stages=[stage1]",
    "preset.stage1.loop.steps=1400",
    "preset.stage1.loop.checkpoint_every=40",
    "preset.stage1.loop.log_every=40",
]
# a one-minute limit, signalled 10 s before it (once training has started), with no requeue left: submitit does
# not requeue it
NO_TIME_LEFT = ["cluster.time_min.train=1", "launcher.signal_delay_s=10", "launcher.max_timeouts=0"]
# a quarter GB, below the memory stage 1 holds on its own at toy size: SLURM kills the job at its first memory poll,
# a minute in (JobAcctGatherFrequency in tests/infra/slurm.py), after its first checkpoints
TOO_LITTLE_MEMORY = ["cluster.mem_gb=0.25"]


def stage1_job(outputs: Path) -> tuple[str, Path]:
    ((key, jid),) = [(k, j) for k, j in jobs_of(outputs).items() if "/stage1-" in k]
    return jid, outputs / "latent_vs_size" / key


def status_of(outputs: Path, uri: str) -> dict:
    out = sweep(*ONE_STAGE, "action=status", "--json", outputs=outputs, uri=uri)
    return next(s for s in json.loads(out)["stages"] if s["key"] == "TiTok-S-16/stage1")


def test_jobs_ended_by_slurm_are_named_marked_and_resumed(slurm_cluster, mlflow_server, tmp_path):
    """A stage-1 job scancel'ed mid-training, one past its time limit with no requeue left, and one over its memory
    limit: `action=status` names each reason, the cell's run is marked with it, and a rerun (with the usual limits)
    resumes from the checkpoint: each cell ends FINISHED without an error tag, with the weights and curve of an
    uninterrupted run of the same sweep (each point once)."""
    uri = mlflow_server.uri
    cancelled, timed_out, out_of_memory = tmp_path / "cancelled", tmp_path / "timeout", tmp_path / "oom"
    uninterrupted = tmp_path / "uninterrupted"
    sweep(*ONE_STAGE, outputs=cancelled, uri=uri)
    sweep(*ONE_STAGE, *NO_TIME_LEFT, outputs=timed_out, uri=uri)
    sweep(*ONE_STAGE, *TOO_LITTLE_MEMORY, outputs=out_of_memory, uri=uri)
    sweep(*ONE_STAGE, outputs=uninterrupted, uri=uri)  # queued last: it runs once a core is free
    cases = {"CANCELLED": cancelled, "TIMEOUT": timed_out, "OUT_OF_MEMORY": out_of_memory}
    jobs = {reason: stage1_job(out) for reason, out in cases.items()}
    deadline = time.time() + 900
    jid, stage = jobs["CANCELLED"]
    while not (stage / "checkpoint.pt").exists() and time.time() < deadline:
        assert not (stage / "result.json").exists(), "stage 1 ended before it was caught training"
        time.sleep(0.3)
    subprocess.run(["scancel", jid], check=True)
    while time.time() < deadline and any(jid in {j for j, _, _ in squeue()} for jid, _ in jobs.values()):
        time.sleep(2)
    for reason, out in cases.items():
        jid, stage = jobs[reason]
        if reason == "TIMEOUT" and (stage / "result.json").exists():
            pytest.skip("stage 1 finished within its one-minute limit on this machine: nothing timed out")
        s = status_of(out, uri)
        assert (s["state"], s["reason"]) == ("ended", reason), (s, states(jid))
        if reason == "OUT_OF_MEMORY":  # SLURM killed it: its own line in the job's log (sacct says FAILED)
            assert "exceeded memory limit" in Path(s["log"]).read_text(), s["log"]
        assert s["step"] and s["rerun"] == f"resumes stage1 at step {s['step']}", s
        (run_dir,) = (out / "latent_vs_size" / "TiTok-S-16").glob("run-*")
        run = MlflowClient(uri).get_run(json.loads((run_dir / T.RUN_ID_FILE).read_text())["run_id"])
        assert run.info.status == ("KILLED" if reason == "CANCELLED" else "FAILED"), run.info
        assert run.data.tags[T.TAG_ERROR].startswith(f"{reason}: slurm job {jid}"), run.data.tags
        sweep(*ONE_STAGE, "wait=true", outputs=out, uri=uri, timeout=900)  # the rerun
        assert json.loads((stage / "result.json").read_text())["resumed_from"] == s["step"]
        run = MlflowClient(uri).get_run(run.info.run_id)
        assert run.info.status == "FINISHED" and not set(T.ERROR_TAGS) & set(run.data.tags), run.data.tags
        steps = [m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "stage1/ce")]
        assert len(steps) == len(set(steps)), f"{reason}: a curve point logged twice: {sorted(steps)}"
    # the uninterrupted run: waited for (it submits nothing new) and its run finished
    assert "submitted 0 jobs" in sweep(*ONE_STAGE, "wait=true", outputs=uninterrupted, uri=uri, timeout=900)
    jid, stage = stage1_job(uninterrupted)
    assert json.loads((stage / "result.json").read_text())["resumed_from"] == 0, states(jid)
    curves = [
        {
            m.step: m.value
            for m in MlflowClient(uri).get_metric_history(
                json.loads(next((out / "latent_vs_size" / "TiTok-S-16").glob("run-*/" + T.RUN_ID_FILE)).read_text())[
                    "run_id"
                ],
                "stage1/ce",
            )
        }
        for out in [uninterrupted, *cases.values()]
    ]
    # interrupted at different steps, resumed to the uninterrupted run's numbers
    loop = json.loads((stage / "spec.json").read_text())["spec"]["loop"]
    assert sorted(curves[0]) == list(range(loop["log_every"], loop["steps"] + 1, loop["log_every"])), sorted(curves[0])
    assert all(c == curves[0] for c in curves[1:]), [sorted(c) for c in curves]
    from safetensors.torch import load_file

    a, *others = (load_file(s / "model.safetensors") for s in [stage, *(s for _, s in jobs.values())])
    assert all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for b in others)
