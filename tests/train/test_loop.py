"""The loop's handling of the cluster, on toy objectives: the preemption signal saves at the next step boundary
before its handler runs, a checkpoint is also saved by wall time, and the run resumes to the uninterrupted result
with the time lost counted. The toy objective here is also tests/train/test_trainer.py's."""

import json
import os
import signal
import time

import pytest
import torch

from bench.core import dist as D
from bench.train import loop as L
from bench.train import preemption
from bench.train.checkpoint import CHECKPOINT
from bench.train.loop import train
from bench.train.optim import OptimConfig
from bench.train.preemption import PROGRESS, SAVE_SIGNAL
from bench.train.trainer import LoopConfig, Objective


def _objective(loss_at=lambda step, out: out, logs=lambda out: {}):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)

    def loss(name, wrapped, batch, step, cache):
        # an fp32 loss small enough that its gradients, scaled by the fp16 scaler's first scale (2^16), fit fp16
        out = 1e-3 * (wrapped["m"](batch).float() - 1).pow(2).mean()
        return loss_at(step, out), logs(out)

    return Objective(modules={"m": model}, optim={"m": OptimConfig(lr=1e-2, warmup_steps=2)}, loss=loss, ema_of="m")


def _batches(hook=lambda step: None):
    def batches(start):
        step = start
        while True:
            hook(step)
            yield torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
            step += 1

    return batches


def _cfg(steps, **kw):
    return LoopConfig(steps=steps, batch_size=8, checkpoint_every=kw.pop("checkpoint_every", 1000), **kw)


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# ---- preemption: save at the next step boundary, then the signal's own handler ---------------------------------------
@pytest.fixture
def requeue_handler():
    """A stand-in for submitit's handler of the time-limit signal: it records what is on disk and exits the job."""
    seen = []

    def handler(signum, frame):
        seen.append(signum)
        raise SystemExit(-1)

    previous = signal.signal(SAVE_SIGNAL, handler)
    yield seen
    signal.signal(SAVE_SIGNAL, previous)


def test_the_preemption_signal_saves_then_requeues_and_the_resumed_run_is_exact(tmp_path, requeue_handler):
    full = train(_objective(), _batches(), _cfg(9), tmp_path / "full")

    def signal_at_step_5(step):
        if step == 5:  # arrives while the loop fetches step 5's batch: step 5 runs, then the save at 6
            os.kill(os.getpid(), SAVE_SIGNAL)

    with pytest.raises(SystemExit):
        train(_objective(), _batches(signal_at_step_5), _cfg(9), tmp_path / "resumed")
    assert requeue_handler == [SAVE_SIGNAL]
    ckpt = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)
    assert ckpt["step"] == 6
    assert signal.getsignal(SAVE_SIGNAL) is not None and requeue_handler  # the job's handler is back in place
    resumed = train(_objective(), _batches(), _cfg(9), tmp_path / "resumed")
    assert resumed.resumed_from == 6 and _same_weights(full.model, resumed.model)
    assert resumed.lost_s == 0.0 and resumed.wall_s >= ckpt["wall_s"]


class _ToyJob:
    """A submitit job training the toy objective slowly, saying which step it has reached."""

    def __init__(self, out, steps):
        self.out, self.steps = out, steps

    def __call__(self):
        def reached(step):
            (self.out / "reached.tmp").write_text(str(step))
            os.replace(self.out / "reached.tmp", self.out / "reached")
            time.sleep(0.02)

        result = train(_objective(), _batches(reached), _cfg(self.steps), self.out / "stage")
        return result.resumed_from, result.model.state_dict()

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def test_a_preempted_local_job_saves_where_it_was_and_resumes_exactly(tmp_path):
    """SLURM's signal to a running submitit job: the loop saves at the step it reached (checkpoint_every is far
    off), submitit requeues, and the requeued job resumes there to the uninterrupted result."""
    import submitit

    from bench.launch import child_processes

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(timeout_min=60)
    job = executor.submit(_ToyJob(tmp_path, 60))
    deadline = time.monotonic() + 300
    while not (tmp_path / "reached").exists() or int((tmp_path / "reached").read_text() or -1) < 5:
        assert time.monotonic() < deadline and not job.done(), job.stderr()
        time.sleep(0.02)
    (task,) = child_processes(int(job.job_id))
    os.kill(task, SAVE_SIGNAL)
    resumed_from, weights = job.result()
    assert 5 <= resumed_from < 60
    full = train(_objective(), _batches(), _cfg(60), tmp_path / "full")
    assert all(torch.equal(v, weights[k]) for k, v in full.model.state_dict().items())


def test_the_signal_with_no_handler_saves_then_ends_the_process(tmp_path):
    """Outside submitit the signal's default action (ending the process) follows the save."""
    script = f"""
import os, torch
from tests.train.test_loop import _objective, _batches, _cfg
from bench.train.loop import train
from bench.train.preemption import SAVE_SIGNAL
def at_3(step):
    if step == 3:
        os.kill(os.getpid(), SAVE_SIGNAL)
train(_objective(), _batches(at_3), _cfg(9), {str(tmp_path)!r})
"""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -SAVE_SIGNAL, proc.stderr
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"] == 4


def _ddp_signal_worker(rank, world, port, out):
    from tests.distributed import join

    join(rank, world, port)
    info = D.setup("cpu")
    saved, handled = [], []
    real = L.save_resume_point
    L.save_resume_point = lambda state, *a: (saved.append(state["step"]), real(state, *a))
    signal.signal(
        SAVE_SIGNAL, lambda signum, frame: handled.append(torch.load(out / CHECKPOINT, weights_only=True)["step"])
    )  # as submitit's on a rank > 0: it returns

    def signal_one_rank(step):
        if step == (2 if rank == 0 else 4):
            os.kill(os.getpid(), SAVE_SIGNAL)

    train(_objective(), _batches(signal_one_rank), _cfg(9), out, info)
    (out / f"rank{rank}.json").write_text(json.dumps({"saved": saved, "handled": handled}))
    torch.distributed.destroy_process_group()


def test_ranks_signalled_at_different_steps_save_together(tmp_path):
    """Each rank's request reaches every rank with the next step's non-finite check: all save at the same boundary
    (the save is collective), and each rank's handler runs after the save its own signal asked for."""
    from tests.distributed import spawn

    spawn(_ddp_signal_worker, 2, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["saved"] == [3, 5, 9] and ranks[1]["saved"] == []  # rank 0 writes the files
    assert ranks[0]["handled"] == [3] and ranks[1]["handled"] == [5]


def test_a_checkpoint_by_wall_time(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 100))  # each reading of the clock 100 s after the last
    monkeypatch.setattr(time, "time", lambda: float(next(clock)))
    saved = []
    real = L.save_resume_point
    monkeypatch.setattr(L, "save_resume_point", lambda state, *a: (saved.append(state["step"]), real(state, *a)))
    train(_objective(), _batches(), _cfg(6, checkpoint_every_s=250.0), tmp_path)
    assert saved[:-1] and saved[-1] == 6  # some before the end, by time alone (checkpoint_every is 1000)


def test_time_after_the_last_checkpoint_counts_as_lost(tmp_path, monkeypatch):
    monkeypatch.setattr(preemption, "HEARTBEAT_S", 0.0)  # a heartbeat every step

    class Killed(Exception):
        pass

    def kill_at_5(step):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(_objective(), _batches(kill_at_5), _cfg(8, checkpoint_every=3), tmp_path)
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    progress = json.loads((tmp_path / PROGRESS).read_text())
    assert ckpt["step"] == 3 and progress["step"] == 5 and progress["wall_s"] > ckpt["wall_s"]
    resumed = train(_objective(), _batches(), _cfg(8, checkpoint_every=3), tmp_path)
    assert resumed.lost_s == pytest.approx(progress["wall_s"] - ckpt["wall_s"])
    assert resumed.wall_s >= progress["wall_s"]  # the cost counts the attempt's whole time


def test_the_lost_time_is_in_the_cells_gpu_hours():
    """A stage's lost_s is part of its wall_s (so of cost_gpu_hours) and shown apart as cost_lost_gpu_hours."""
    from types import SimpleNamespace

    from bench.stages.base import training_result
    from bench.stages.task import cell_cost
    from bench.train.stage import StageResult

    result = training_result(StageResult("model.safetensors", 10, 7200.0, {}, lost_s=1800.0))
    assert (result["wall_s"], result["lost_s"]) == (7200.0, 1800.0)
    task = SimpleNamespace(resources="train", result=lambda: {**result, "devices": 8})
    assert cell_cost([task]) == {"cost_gpu_hours": 16.0, "cost_wall_hours": 2.0, "cost_lost_gpu_hours": 4.0}


def test_save_and_skip_settings_are_not_part_of_a_stage_identity():
    """How often a stage saves, and when a failing fp16 run gives up, change no result: identities stay as they were."""
    from dataclasses import replace

    from bench.stages import stage1
    from tests.train.test_training import stage1_cfg

    spec = stage1_cfg(4)
    other = replace(spec, loop=replace(spec.loop, checkpoint_every_s=5.0, max_consecutive_skips=3))
    assert stage1.RULE.settings(spec) == stage1.RULE.settings(other)
    assert not {"checkpoint_every_s", "max_consecutive_skips"} & set(stage1.RULE.settings(spec)["loop"])
