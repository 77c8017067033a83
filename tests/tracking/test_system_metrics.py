"""System metrics of the training stages: rank 0 of a training stage samples the machine's CPU
and memory (and GPUs) into the cell's run as MLflow's system/* metrics, through the same buffer as every other metric,
so they survive a store that is down; other ranks and the evaluation stages log none."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bench import tracking as T
from bench.core.dist import DistInfo
from bench.stages import Tracking, run_task
from tests.distributed import join, spawn

DEAD_STORE = "http://127.0.0.1:9"  # nothing listens there: every entry goes to the run folder's buffer
CPU_AND_MEMORY = {
    "system/cpu_utilization_percentage",
    "system/system_memory_usage_megabytes",
    "system/system_memory_usage_percentage",
    "system/process_memory_rss_megabytes",
}


class Recorder:
    def __init__(self):
        self.calls: list[tuple[dict, int]] = []

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.calls.append((metrics, step))


def test_the_sampler_logs_cpu_and_memory_every_interval_and_once_at_the_end():
    recorder = Recorder()
    with T.SystemMetrics(recorder, interval_s=0.05) as sampler:
        time.sleep(0.4)
    assert sampler.samples == len(recorder.calls) >= 3
    assert [step for _, step in recorder.calls] == list(range(len(recorder.calls)))
    for metrics, _ in recorder.calls:
        assert CPU_AND_MEMORY <= set(metrics) and all(k.startswith("system/") for k in metrics)
        assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
        assert 0 < metrics["system/system_memory_usage_percentage"] <= 100
        assert metrics["system/process_memory_rss_megabytes"] > 10  # this Python process, torch imported
    n = len(recorder.calls)
    time.sleep(0.15)
    assert len(recorder.calls) == n  # the thread ended with the block


def test_only_rank_0_of_a_training_stage_samples(tmp_path):
    plan = _teacher_plan(tmp_path)
    task = plan.task("_shared/teacher")
    tracking = Tracking(DEAD_STORE, str(tmp_path), system_metrics_s=1.0)
    assert isinstance(tracking.system_metrics(task, DistInfo(rank=0, world_size=2)), T.SystemMetrics)
    assert not isinstance(tracking.system_metrics(task, DistInfo(rank=1, world_size=2)), T.SystemMetrics)
    off = Tracking(DEAD_STORE, str(tmp_path), system_metrics_s=0)
    assert not isinstance(off.system_metrics(task, DistInfo()), T.SystemMetrics)
    evaluation = next(t for t in plan.tasks() if t.resources == "eval")
    assert not isinstance(tracking.system_metrics(evaluation, DistInfo()), T.SystemMetrics)


def _teacher_plan(outputs, steps: int = 4):
    from tests.sweep.test_faults import plan_of

    return plan_of(outputs, f"preset.teacher.loop.steps={steps}")


def buffered_system_metrics(folder: Path) -> list[dict]:
    buffer = folder / T.BUFFER_FILE
    entries = [json.loads(line) for line in buffer.read_text().splitlines()] if buffer.exists() else []
    return [e for e in entries if e["op"] == "metrics" and any(k.startswith("system/") for k in e["metrics"])]


def test_a_toy_training_stage_logs_system_metrics_through_the_buffer(tmp_path):
    """The teacher stage at toy size, its store down: the system/* samples wait in the run folder's buffer."""
    plan = _teacher_plan(tmp_path)
    T.declare_run(DEAD_STORE, plan.root, "latent_vs_size", "sweep", {})
    run_task(plan.task("_shared/teacher"), Tracking(DEAD_STORE, str(plan.root), system_metrics_s=0.2))
    samples = buffered_system_metrics(Path(plan.root))
    assert samples and all(CPU_AND_MEMORY <= set(e["metrics"]) for e in samples)
    assert [e["step"] for e in samples] == list(range(len(samples)))


def _two_rank_worker(rank, world, port, outputs):
    join(rank, world, port)
    plan = _teacher_plan(outputs)
    run_task(
        plan.task("_shared/teacher"), Tracking(DEAD_STORE, str(Path(outputs) / f"rank{rank}"), system_metrics_s=0.2)
    )


@pytest.mark.slow  # two gloo processes importing torch and composing the sweep
def test_rank_1_logs_no_system_metrics(tmp_path):
    """Both ranks get a tracking folder of their own here (a real job shares one): rank 1's stays empty."""
    for rank in (0, 1):
        T.declare_run(DEAD_STORE, tmp_path / f"rank{rank}", "latent_vs_size", "sweep", {})
    spawn(_two_rank_worker, 2, str(tmp_path))
    assert buffered_system_metrics(tmp_path / "rank0")
    assert not buffered_system_metrics(tmp_path / "rank1")
