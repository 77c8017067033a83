"""The training loop every stage shares: `train` runs an `Objective`'s steps (bench/train/trainer.py) to
cfg.steps, resuming exactly from the newest good resume point (bench/train/checkpoint.py) and saving one every
`checkpoint_every` steps, every `checkpoint_every_s` seconds, at the end, and at the next step boundary after the
preemption / time-limit signal (bench/train/preemption.py)."""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.core import dist as D

from .checkpoint import CHECKPOINT, load_resume_point, rng_state, save_resume_point, set_rng_state
from .preemption import SAVE_SIGNAL, WallClock, signal_asks_to_save
from .trainer import LoopConfig, NonFiniteLossError, Objective, Trainer


@dataclass
class TrainResult:
    steps: int
    wall_s: float
    final_logs: dict[str, float]
    model: nn.Module  # the EMA (or raw) weights of objective.ema_of, on CPU
    resumed_from: int = 0  # the step of the checkpoint this run started from (0: from scratch)
    precision: str = "fp32"  # what ran (D.runnable_precision): the asked-for autocast, or fp32 where it is slow
    lost_s: float = 0.0  # of wall_s: time earlier attempts ran past their last checkpoint (work done again)


def train(
    objective: Objective,
    batches: Callable[[int], Iterator],
    cfg: LoopConfig,
    out_dir: str | os.PathLike,
    info: D.DistInfo | None = None,
    log: Callable[[dict, int], None] | None = None,
) -> TrainResult:
    """Run (or resume) training to cfg.steps.

    batches(start_step) -> iterator of this rank's batches for steps start_step, start_step + 1, ... (each of
    batch_size / world_size samples); the loop splits each into grad_accum micro-batches.
    A checkpoint in out_dir is resumed exactly (weights, optimizer, EMA, RNG, data position). Checkpoints are saved
    every cfg.checkpoint_every steps, once cfg.checkpoint_every_s seconds have passed since the last, at the end, and
    at the step boundary after SAVE_SIGNAL (the signal is then passed on to the handler it arrived for).
    wall_s counts every attempt's time, including what a requeued or killed attempt did after its last checkpoint
    (read from PROGRESS), which is also lost_s.
    """
    info = info or D.DistInfo()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(cfg.seed, info.rank)
    ckpt_path = out / CHECKPOINT
    ckpt, resumed_path = load_resume_point(out, say=info.is_main)
    keep_previous = resumed_path == ckpt_path  # a damaged checkpoint.pt is overwritten, never kept as the previous
    trainer = Trainer(objective, cfg, info, ckpt)
    start, prior_wall_s, lost_s = 0, 0.0, 0.0  # wall time of earlier attempts (a requeued job counts all of its time)
    if ckpt is not None:
        set_rng_state(ckpt["rng"][min(info.rank, len(ckpt["rng"]) - 1)])
        start, prior_wall_s, lost_s = ckpt["step"], ckpt.get("wall_s", 0.0), ckpt.get("lost_s", 0.0)

    logs: dict[str, float] = {}
    clock = WallClock(out, prior_wall_s, lost_s, write=info.is_main)
    it = batches(start)
    with signal_asks_to_save(SAVE_SIGNAL) as signalled:
        for step in range(start, cfg.steps):
            done = step + 1
            log_step = done % cfg.log_every == 0 or done == cfg.steps
            batch = next(it)
            asked = bool(signalled)
            trainer.save_requested = asked or clock.save_due(cfg.checkpoint_every_s)
            try:
                step_logs = trainer.step(step, batch, logs=log_step)
            except NonFiniteLossError as err:
                raise NonFiniteLossError(
                    f"{err}; the last good checkpoint ({ckpt_path if ckpt_path.exists() else 'none yet'}) is kept"
                ) from None
            if log_step:
                logs = step_logs
                if log is not None and info.is_main:
                    log(dict(logs, steps_per_s=(done - start) / max(clock.elapsed_s(), 1e-9)), done)
            if not info.distributed:  # a signal during the step counts at once; across ranks, at the next check
                asked = bool(signalled)
                trainer.save_requested |= asked
            if done % cfg.checkpoint_every == 0 or done == cfg.steps or _agreed(trainer, info):
                _save(trainer, done, ckpt_path, keep_previous, clock)
                keep_previous = True
                if asked:  # saved: now what the signal was meant to do (submitit: requeue and exit)
                    signalled.pop()()
            elif clock.heartbeat_due():
                clock.heartbeat(done)

    final = objective.modules[objective.ema_of] if objective.ema_of else None
    if final is not None:
        final = copy.deepcopy(final).cpu().eval()
        if trainer.ema is not None:
            trainer.ema.copy_to(final)
    return TrainResult(cfg.steps, clock.wall_s(), logs, final, start, trainer.precision, clock.lost_s)


def _seed_everything(seed: int, rank: int) -> None:
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)


def _save(trainer: Trainer, step: int, path: Path, keep_previous: bool, clock: WallClock) -> None:
    """The resume point of `step`, collectively: every rank's RNG state, written by rank 0."""
    info = trainer.info
    rng = [None] * info.world_size
    if info.distributed:
        torch.distributed.all_gather_object(rng, rng_state())
    else:
        rng = [rng_state()]
    wall = clock.wall_s()
    if info.is_main:
        save_resume_point(
            {"step": step, **trainer.state_dict(), "rng": rng, "wall_s": wall, "lost_s": clock.lost_s},
            path,
            keep_previous,
        )
    clock.saved(step, wall)
    D.barrier()


def _agreed(trainer: Trainer, info: D.DistInfo) -> bool:
    """Whether the ranks save at this step boundary: the answer read with the step's non-finite check, or, where no
    check ran, a read of its own."""
    if not info.distributed:
        return trainer.save_requested
    if trainer.save_agreed is None:
        return D.any_rank(trainer.save_requested, info.device)
    return trainer.save_agreed
