"""System metrics: CPU/GPU utilisation and memory of a training stage, sampled by a thread into the cell's run
through a RunLogger, so that samples taken while the store is down are buffered like every other metric."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .logger import RunLogger

log = logging.getLogger(__name__)

SYSTEM_PREFIX = "system/"  # MLflow's own system-metrics names, so its UI shows them in the run's system metrics
SYSTEM_METRICS_ENV = "TITOK_SYSTEM_METRICS_S"  # seconds between samples; 0 turns them off
SYSTEM_METRICS_INTERVAL_S = 10.0


def system_metrics_interval() -> float:
    """$TITOK_SYSTEM_METRICS_S, else SYSTEM_METRICS_INTERVAL_S."""
    return float(os.environ.get(SYSTEM_METRICS_ENV, SYSTEM_METRICS_INTERVAL_S))


class SystemMetrics:
    """A daemon thread that samples this machine every `interval_s` seconds while the block runs, and once as it
    ends, and logs each sample through `logger` (a RunLogger of its own: the store's client is not shared between
    threads), so that samples taken while the store is down are buffered in the run folder like every other metric.
    Step = the sample's number. Metrics (MLflow's names and units): system/cpu_utilization_percentage (all cores,
    since the last sample), system/system_memory_usage_megabytes and _percentage, system/process_memory_rss_megabytes
    (this process), and per GPU of the node that NVML sees, system/gpu_<i>_utilization_percentage,
    _memory_usage_megabytes and _memory_usage_percentage (without NVML (nvidia-ml-py): memory only, from torch, for
    the GPUs this process sees). Without psutil it logs nothing and says so once; it never fails the job."""

    def __init__(self, logger: RunLogger, interval_s: float = SYSTEM_METRICS_INTERVAL_S):
        import threading

        self.logger, self.interval_s = logger, interval_s
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)
        self._gpus: list = []

    def __enter__(self) -> SystemMetrics:
        try:
            import psutil
        except ImportError:
            log.warning("psutil is not installed: no system metrics (pip install psutil)")
            return self
        psutil.cpu_percent(interval=None)  # the first call starts the interval the next one measures
        self._gpus = _gpu_handles()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=30)

    def sample(self) -> dict[str, float]:
        import psutil

        memory = psutil.virtual_memory()
        out = {
            "cpu_utilization_percentage": psutil.cpu_percent(interval=None),
            "system_memory_usage_megabytes": memory.used / 1e6,
            "system_memory_usage_percentage": 100 * memory.used / memory.total,
            "process_memory_rss_megabytes": psutil.Process().memory_info().rss / 1e6,
        }
        for i, handle in enumerate(self._gpus):
            out.update(_gpu_sample(i, handle))
        return {SYSTEM_PREFIX + k: float(v) for k, v in out.items()}

    def _loop(self) -> None:
        while True:
            stopped = self._stop.wait(self.interval_s)
            try:
                self.logger.log_metrics(self.sample(), step=self.samples)
                self.samples += 1
            except Exception as err:  # a sampler must never take the training job down
                log.warning("system metrics: %s: %s", type(err).__name__, err)
            if stopped:
                return


def _gpu_handles() -> list:
    """NVML handles of the node's GPUs, else ("torch", index) for the GPUs torch sees, else []."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no NVML library, no driver, or nvidia-ml-py not installed
        pass
    import torch

    return [("torch", i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _gpu_sample(i: int, handle) -> dict[str, float]:
    if isinstance(handle, tuple):
        import torch

        free, total = torch.cuda.mem_get_info(handle[1])
        return {
            f"gpu_{i}_memory_usage_megabytes": (total - free) / 1e6,
            f"gpu_{i}_memory_usage_percentage": 100 * (total - free) / total,
        }
    import pynvml

    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    return {
        f"gpu_{i}_utilization_percentage": pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
        f"gpu_{i}_memory_usage_megabytes": memory.used / 1e6,
        f"gpu_{i}_memory_usage_percentage": 100 * memory.used / memory.total,
    }
