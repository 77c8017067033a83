"""The estimate's device: `cluster.device` {name, peak_tflops, utilization}. peak_tflops is the dense peak of one
accelerator in the precision the training runs in (A100: 312 bf16/fp16); null measures it here with bench.speed's
matmul probe (fp32, this process's threads: for a CPU cluster). utilization is an assumption the user states: the
share of the peak that a training step achieves (model-FLOPs utilisation; `python -m bench.speed --sections
peak,training` measures it on the machine it runs on).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """One accelerator (or, on a CPU cluster, one job's CPU) as the estimate sees it."""

    name: str
    peak_flops: float  # dense peak FLOP/s of one device (CPU: of the job's threads)
    utilization: float  # assumed share of the peak a step achieves
    peak_source: str  # "cluster config" or "measured here (...)"
    devices: int  # accelerators per job (nodes x gpus_per_node); CPU: 1 (the job)
    cores: int  # CPU: cores per job (what cost_gpu_hours counts on a CPU); GPU: = devices
    cpu: bool

    @property
    def job_flops(self) -> float:
        return self.peak_flops * self.utilization * self.devices

    def describe(self) -> str:
        where = (
            f"{self.devices} GPUs per job"
            if not self.cpu
            else f"one job on {self.cores} cores; device-hours are core-hours, as cost_gpu_hours counts them"
        )
        return (
            f"device {self.name}: peak {self.peak_flops / 1e12:.4g} TFLOP/s ({self.peak_source}), utilisation "
            f"{self.utilization:.0%} assumed (cluster.device.utilization) -> {self.job_flops / 1e12:.4g} "
            f"TFLOP/s per job; {where}"
        )


class CostError(ValueError):
    """A cluster config whose device cannot give an estimate; the message says which value and what to do."""


@functools.lru_cache(maxsize=4)
def measured_peak(budget_s: float = 1.0) -> float:
    """fp32 matmul FLOP/s of this process (bench.speed's probe), once per process."""
    import torch

    from bench.speed.timing import matmul_peak

    return matmul_peak(torch.float32, torch.device("cpu"), budget_s=budget_s)


def device_from_cluster(cluster: dict) -> Device:
    """The estimate's device from a cluster config's `device` block and its GPUs per node."""
    d = dict(cluster.get("device") or {})
    gpus = int(cluster.get("nodes") or 1) * int(cluster.get("gpus_per_node") or 0)
    cores = (
        int(cluster.get("nodes") or 1)
        * int(cluster.get("tasks_per_node") or 1)
        * int(cluster.get("cpus_per_task") or 1)
    )
    util = d.get("utilization")
    if not isinstance(util, int | float) or not 0 < util <= 1:
        raise CostError(
            f"cluster.device.utilization={util!r}: state the assumed share of the peak a training step "
            f"achieves, a number in (0, 1] (e.g. cluster.device.utilization=0.4)"
        )
    peak = d.get("peak_tflops")
    if peak is None:
        if gpus:
            raise CostError(
                "cluster.device.peak_tflops is not set: give the accelerator's dense peak in TFLOP/s "
                "(A100: 312 bf16/fp16); only a CPU cluster's peak is measured here"
            )
        value, source = measured_peak(), "measured here: bench.speed fp32 matmul probe"
    elif not isinstance(peak, int | float) or peak <= 0:
        raise CostError(f"cluster.device.peak_tflops={peak!r}: a positive number of TFLOP/s, or null to measure it")
    else:
        value, source = float(peak) * 1e12, "cluster config"
    name = d.get("name") or ("cpu" if not gpus else "gpu")
    return Device(name, value, float(util), source, gpus or 1, gpus or cores, cpu=not gpus)
