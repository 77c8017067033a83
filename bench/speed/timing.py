"""Timing of device work: synchronised wall-clock runs (median, inter-quartile range, min/max), interleaved timing
of alternatives, the device's measured matmul peak, and a description of the device and software."""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def iqr(self) -> float:
        if len(self.seconds) < 2:
            return 0.0
        q = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return q[2] - q[0]

    def row(self) -> dict:
        return {
            "median_s": self.median,
            "iqr_s": self.iqr,
            "min_s": min(self.seconds),
            "max_s": max(self.seconds),
            "runs": len(self.seconds),
        }


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    warmup: int,
    repeats: int,
    device: torch.device,
    log: Callable[[str], None] | None = None,
) -> dict[str, Timing]:
    """`warmup` untimed rounds, then `repeats` timed rounds (device-synchronised), each round calling every
    function once in turn, so a change in machine load affects all of them alike."""
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + max(1, repeats)):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                seconds[name].append(elapsed)
            if log:
                log(f"{name} {'warm-up' if round_ < warmup else 'run'} {round_ + 1}: {elapsed:.3g} s")
    return {name: Timing(s) for name, s in seconds.items()}


def time_runs(fn: Callable[[], object], *, warmup: int, repeats: int, device: torch.device) -> Timing:
    return time_interleaved({"fn": fn}, warmup=warmup, repeats=repeats, device=device)["fn"]


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int | None = None, budget_s: float = 2.0) -> float:
    """FLOP/s of the fastest square matmul, the device's practical ceiling (the best run, as a ceiling should not
    drop when other work shares the machine). Bounded by time, not by a count of products: the size doubles from
    256 up to `size` (2048 on the CPU, 8192 on CUDA) while the next size still fits the budget, and the last size
    is repeated (up to 10 runs) while time is left. Where a dtype lacks hardware support (bf16 on an AVX2-only
    CPU runs at ~1 GFLOP/s, 100x below fp32) the probe stops at a small size instead of running for minutes."""
    largest = size or (8192 if device.type == "cuda" else 2048)
    deadline = time.perf_counter() + budget_s
    best, n = 0.0, min(256, largest)
    with torch.inference_mode():
        while True:
            a = torch.randn(n, n, device=device, dtype=dtype)
            product = functools.partial(torch.matmul, a, torch.randn(n, n, device=device, dtype=dtype))
            seconds = time_runs(product, warmup=1, repeats=3, device=device).seconds
            best = max(best, 2 * n**3 / min(seconds))
            # the next size costs ~8x this one, for a warm-up and three runs
            if n < largest and time.perf_counter() + 32 * max(seconds) < deadline:
                n = min(2 * n, largest)
                continue
            for _ in range(7):
                if time.perf_counter() + max(seconds) > deadline:
                    break
                best = max(best, 2 * n**3 / time_runs(product, warmup=0, repeats=1, device=device).median)
            return best


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"CPU, {os.cpu_count()} cores" + (f" ({model})" if model else "")


def environment(device: torch.device) -> dict:
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "weights": "random (models.build)",
    }
