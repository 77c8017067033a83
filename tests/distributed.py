"""Helpers for tests that run several gloo processes on this machine (torch.distributed through the env)."""

import os
import socket

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join(rank: int, world: int, port: int) -> None:
    """Inside a spawned worker: the environment bench.core.dist.setup() reads, one thread per process."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)


def spawn(worker, world: int, *args) -> None:
    """Run worker(rank, world, port, *args) in `world` fresh processes and wait for all of them."""
    mp.start_processes(worker, args=(world, free_port(), *args), nprocs=world, start_method="spawn")
