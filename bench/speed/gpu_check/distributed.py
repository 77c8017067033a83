"""The GPU check's process-group rows: a one-rank group on a free local port (NCCL on CUDA, gloo on the CPU), and
a two-process DDP step started by torchrun, whose ranks run `ddp_worker`."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from bench.core import dist as D

from ..factories import tokenizer_config
from ..training import training_step
from .config import TOKENIZER, Config
from .table import FAIL, OK, SKIP, Row

DDP_RANKS = 2
DDP_TIMEOUT_S = 300.0  # the torchrun of the ddp check, start-up included


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_nccl(cfg: Config, state: dict) -> list[Row]:
    """A process group of one rank on a free local port: NCCL on CUDA (gloo on the CPU, as bench.core.dist.setup
    picks), all_reduce of a device tensor, barrier, destroy."""
    t0 = time.perf_counter()
    backend = "nccl" if cfg.device.type == "cuda" else "gloo"
    if dist.is_initialized():
        return [Row("process group", backend, "world 1", "a process group already exists here", "", FAIL)]
    port = free_port()
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, timeout=datetime.timedelta(seconds=60)
    )
    try:
        x = torch.arange(4, dtype=torch.float32, device=cfg.device)
        dist.all_reduce(x)
        D.barrier()
        got = dist.get_backend()
        ok = torch.equal(x.cpu(), torch.arange(4.0)) and got == backend
    finally:
        dist.destroy_process_group()
    result = f"{got} on port {port}: init, all_reduce, barrier, destroy"
    return [
        Row(
            "process group",
            backend,
            "world 1",
            result + ("" if ok else ": wrong values"),
            "all_reduce of one rank is the identity",
            OK if ok else FAIL,
            time.perf_counter() - t0,
        )
    ]


def check_ddp(cfg: Config, state: dict) -> list[Row]:
    """DDP_RANKS processes started by torchrun running `ddp_worker` (NCCL on CUDA, gloo on the CPU); skipped where
    fewer CUDA devices than ranks are visible."""
    backend = "nccl" if cfg.device.type == "cuda" else "gloo"
    subject, setting = f"DDP over {backend}", f"torchrun, {DDP_RANKS} processes, toy stage-1 Trainer step"
    if cfg.device.type == "cuda" and torch.cuda.device_count() < DDP_RANKS:
        return [
            Row(
                "multi-rank",
                subject,
                setting,
                f"{torch.cuda.device_count()} CUDA device(s) here: needs {DDP_RANKS}",
                "",
                SKIP,
            )
        ]
    t0 = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="titok-bench-ddp-"))
    try:
        launcher = shutil.which("torchrun", path=str(Path(sys.executable).parent))
        command = [launcher] if launcher else [sys.executable, "-m", "torch.distributed.run"]
        command += [
            "--standalone",
            f"--nproc_per_node={DDP_RANKS}",
            "-m",
            "bench.speed.gpu_check",
            "--ddp-worker",
            str(folder),
            "--device",
            "cuda" if cfg.device.type == "cuda" else "cpu",
        ]
        root = str(Path(__file__).resolve().parents[3])  # the ranks import this checkout's bench
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            OMP_NUM_THREADS="1",
        )
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=DDP_TIMEOUT_S)
        outs = [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or len(outs) != DDP_RANKS:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return [
            Row(
                "multi-rank",
                subject,
                setting,
                f"torchrun exit {done.returncode}: {tail[0][:300]}",
                "every rank agrees",
                FAIL,
                seconds,
            )
        ]
    failed = sorted({name for out in outs for name, ok in out["checks"].items() if not ok})
    result = (
        f"{outs[0]['backend']}, world {outs[0]['world']}: "
        + ", ".join(outs[0]["checks"])
        + ("; fails " + ", ".join(failed) if failed else "")
    )
    return [
        Row(
            "multi-rank",
            subject,
            setting,
            result,
            "every rank agrees",
            FAIL if failed else OK,
            seconds,
            {"ranks": outs},
        )
    ]


def ddp_worker(folder: str, device: str) -> None:
    """One rank of the ddp check (under torchrun): writes `folder`/rank<r>.json with each check's outcome."""
    info = D.setup(device)
    torch.manual_seed(0)
    tok_cfg = tokenizer_config(TOKENIZER, toy=True)
    step = training_step("stage1", tok_cfg, batch_size=4, precision="fp32", seed=0, info=info, grad_accum=2)
    g = torch.Generator(info.device).manual_seed(1 + info.rank)  # each rank its own images
    images = torch.rand(step.batch[0].shape, generator=g, device=info.device)
    before = [p.detach().clone() for p in step.trainer.objective.modules["tokenizer"].parameters()]
    step.batch = (images, *step.batch[1:])
    step()
    params = list(step.trainer.objective.modules["tokenizer"].parameters())
    grads = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
    weights = torch.cat([p.detach().flatten() for p in params])
    both = D.gather_tensors(
        torch.stack(
            [grads.double().sum(), grads.double().abs().sum(), weights.double().sum(), weights.double().abs().sum()]
        )[None]
    )
    checks = {
        "DDP step with no_sync on rank data": bool(torch.equal(both[0], both[1])),
        "weights updated": any(not torch.equal(a, b.detach()) for a, b in zip(before, params)),
    }
    rows = D.gather_tensors(torch.full((info.rank + 1, 2), float(info.rank), device=info.device))
    checks["gather_tensors (uneven)"] = rows.shape == (3, 2) and rows[:, 0].tolist() == [0.0, 1.0, 1.0]
    total = D.all_reduce_sum(torch.ones(1, device=info.device))
    checks["all_reduce_sum"] = total.item() == info.world_size
    checks["main_rank_says"] = D.main_rank_says(info.is_main, info.device)  # rank 0's True on every rank
    D.barrier()
    Path(folder, f"rank{info.rank}.json").write_text(
        json.dumps({"rank": info.rank, "world": info.world_size, "backend": dist.get_backend(), "checks": checks})
    )
    dist.destroy_process_group()
