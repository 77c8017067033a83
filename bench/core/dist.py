"""torch.distributed set-up from the environment (torchrun, or submitit's exported variables).

One process per GPU with NCCL, or CPU processes with gloo. Single-process runs never initialise anything.
The process group's timeout (how long a rank waits in a collective) is the launcher's cluster setting
`process_group_timeout_min`, passed to jobs as $TITOK_BENCH_PG_TIMEOUT_MIN: it must cover the longest wait in which
the other ranks sit in a collective while rank 0 works alone (a stage lock held by a duplicate job, a multi-GB
checkpoint write, an FID bootstrap), which torch's 10-minute NCCL default does not.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import re
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


DEVICES = "auto, cpu, cuda or cuda:N"
TIMEOUT_ENV = "TITOK_BENCH_PG_TIMEOUT_MIN"  # the process group's timeout in minutes (bench.launch sets it in jobs)
DEFAULT_TIMEOUT_MIN = 120.0  # without a setting: longer than a checkpoint write or an FID bootstrap on rank 0


def check_device(device: str) -> str:
    """A device setting of a supported form; anything else (gpu, tpu, mps) is an error rather than a CPU run."""
    if device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", device):
        return device
    raise ValueError(f"device {device!r} is not supported: use one of {DEVICES}")


def timeout_minutes() -> float:
    """The process group's timeout: $TITOK_BENCH_PG_TIMEOUT_MIN, else DEFAULT_TIMEOUT_MIN."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or raw == "":
        return DEFAULT_TIMEOUT_MIN
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(
            f"{TIMEOUT_ENV}={raw!r}: the process group's timeout must be a positive number of minutes "
            "(cluster.process_group_timeout_min)"
        )
    return value


def setup(device: str = "auto") -> DistInfo:
    """Initialise the process group when WORLD_SIZE > 1 (idempotent; its timeout: `timeout_minutes`) and pick this
    rank's device: cuda:N in a single process, cuda:LOCAL_RANK under torchrun/submitit."""
    check_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device != "cpu"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}, but torch sees no CUDA device here: use device cpu (or auto)")
    index = int(device.partition(":")[2]) if ":" in device and world == 1 else local_rank
    dev = torch.device("cuda", index) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(minutes=timeout_minutes()),
        )
    return DistInfo(rank, world, local_rank, dev)


def allocated_gpus(info: DistInfo) -> int:
    """The GPUs this job holds, which is what it costs: SLURM's allocation (GPUs on each node x nodes) where SLURM
    says, else one per rank. A job that runs fewer ranks than it holds GPUs still pays for all of them."""
    per_node = os.environ.get("SLURM_GPUS_ON_NODE", "")
    nodes = os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or "1"
    if per_node.isdigit() and nodes.isdigit() and int(per_node) > 0:
        return int(per_node) * int(nodes)
    return info.world_size


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when the flag is set on any rank (so that every rank takes the same branch)."""
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)


def main_rank_says(flag: bool, device: torch.device) -> bool:
    """Rank 0's flag on every rank: a decision that gates a collective (whether to gather something, whether a
    shared file is there) is taken once, so ranks that see a shared filesystem differently cannot diverge."""
    return bool(broadcast_(torch.tensor([float(flag)], device=device)).item() > 0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite t on every rank with rank `src`'s (in place)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(t, src)
    return t


def gather_tensors(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a per-rank tensor (first dimension may differ between ranks) on every rank, in rank order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, t.cpu())
    return torch.cat(parts).to(t.device)


# ---- autocast on this device ------------------------------------------------------------------------------------
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SLOW_AUTOCAST_FACTOR = 0.5  # an autocast dtype whose matmuls run below half the fp32 rate is not used


@functools.cache
def _matmul_rate(device_type: str, dtype: torch.dtype, n: int = 256) -> float:
    """Matmuls per second of one n x n product on one thread, from the fastest of the runs in a 0.05 s window (at
    least 3). One thread and the fastest run measure the hardware rather than the machine's load: on a busy machine a
    multi-threaded matmul waits for its slowest thread at every barrier (docs/measurements.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(n, n, dtype=dtype)
        a @ a
        start, best, runs = time.perf_counter(), float("inf"), 0
        while time.perf_counter() - start < 0.05 or runs < 3:
            t0 = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t0)
            runs += 1
    finally:
        torch.set_num_threads(threads)
    return 1.0 / best


def autocast_rate_ratio(precision: str, device: torch.device) -> float:
    """The matmul rate in `precision` over the fp32 rate on `device`, from the 0.2 s one-thread probe on a CPU (cached
    per process); 1.0 for fp32 and for CUDA devices (which run bf16/fp16 on tensor cores at or above the fp32 rate)."""
    if precision not in AUTOCAST_DTYPES or device.type != "cpu":
        return 1.0
    return _matmul_rate("cpu", AUTOCAST_DTYPES[precision]) / _matmul_rate("cpu", torch.float32)


def fast_autocast(precision: str, device: torch.device) -> bool:
    """Whether autocast in `precision` runs its matmuls at least at SLOW_AUTOCAST_FACTOR of the fp32 rate here."""
    return autocast_rate_ratio(precision, device) >= SLOW_AUTOCAST_FACTOR


def runnable_precision(precision: str, device: torch.device) -> str:
    """The precision a training loop (and bench.speed's `auto` inference mode) runs at on `device`: `precision`
    itself, except on a CPU whose matmuls in that dtype run below half the fp32 rate (bf16/fp16 on a CPU without
    bf16/fp16 units), where autocast would make the work far slower: fp32 then, with a warning; the caller records
    what ran. CUDA devices run what was asked."""
    ratio = autocast_rate_ratio(precision, device)
    if ratio >= SLOW_AUTOCAST_FACTOR:
        return precision
    _warn_fp32_instead(precision, ratio)
    return "fp32"


@functools.cache  # once per process: every loop and every benchmark row asks again
def _warn_fp32_instead(precision: str, ratio: float) -> None:
    logging.getLogger(__name__).warning(
        "%s asked for, but %s matmuls run at %.2fx the fp32 rate on this CPU (%s): running fp32 instead",
        precision,
        precision,
        ratio,
        torch.backends.cpu.get_cpu_capability(),
    )
