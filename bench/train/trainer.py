"""One optimisation step of a stage's `Objective` on this rank: the modules on the device, one AdamW per optimizer
name, bf16/fp16 autocast, gradient accumulation, clipping, DDP, the EMA, and non-finite steps (fp16 skips them with
the gradient scaler backing off and stops after `max_consecutive_skips` in a row; bf16/fp32 stop at the first).

A stage describes itself as an `Objective`: which modules train under which optimizer (updated in order, e.g.
the tokenizer and then the discriminator), and the loss of each; `LoopConfig` is the loop's settings.

Host syncs: a step reads one flag per optimizer update from the device (its non-finite check, fused with the
ranks' save request); logged values stay on the device and are read together on log steps only.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bench.core import dist as D

from .optim import EMA, OptimConfig, lr_at, param_groups

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient (fp16: in too many steps in a row); the last good checkpoint is
    kept on disk."""


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    batch_size: int  # global batch: across ranks and accumulation micro-batches
    grad_accum: int = 1
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16"
    ema_max_decay: float = 0.999  # 0 disables the EMA
    checkpoint_every: int = 1000
    checkpoint_every_s: float = 1800.0  # also save once this much wall time has passed since the last save (<= 0: off)
    log_every: int = 50
    seed: int = 42
    max_consecutive_skips: int = 50  # fp16: non-finite steps in a row (each skipped, the scale backed off) to stop at

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps={self.steps} must be >= 0")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision={self.precision!r}: expected fp32, bf16 or fp16")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"batch_size={self.batch_size} and grad_accum={self.grad_accum} must be >= 1")
        if self.max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips={self.max_consecutive_skips} must be >= 1")


@dataclass
class Objective:
    """What a stage trains. `modules` maps an optimizer name to its module (updated in this order);
    `loss(name, wrapped, batch, step, cache)` returns (loss, logs) for that optimizer on one micro-batch, where
    `wrapped` maps names to the DDP-wrapped modules and `cache` carries values from earlier updates of the same
    micro-batch (e.g. reconstructions for the discriminator). A log value is a number, a scalar tensor (left on the
    device) or a function of no arguments giving one, called on log steps only (a value whose computation reads the
    device, such as torch.unique)."""

    modules: dict[str, nn.Module]
    optim: dict[str, OptimConfig]
    loss: Callable[..., tuple[torch.Tensor, dict]]
    active: Callable[[str, int], bool] = lambda name, step: True
    ema_of: str | None = None  # the module whose EMA is kept and saved as the final weights
    extra_state: Callable[[], dict] = dict  # e.g. LeCam running means
    load_extra_state: Callable[[dict], None] = lambda state: None
    frozen: dict[str, nn.Module] = field(default_factory=dict)  # moved to the device, never trained
    random_weights: dict[str, bool] = field(default_factory=dict)  # pretrained network of the loss -> a stand-in
    # per-part learning rates: (optimizer name, parameter name) -> part, and (part, step) -> factor on lr_at
    part_of: Callable[[str, str], str] | None = None
    lr_factor: Callable[[str, int], float] = lambda part, step: 1.0
    # optimizer name -> the step its learning-rate schedule starts at (warm-up, then cosine over the steps left);
    # the others' schedules start at step 0
    schedule_start: dict[str, int] = field(default_factory=dict)


def _autocast(device: torch.device, precision: str):
    """The step's autocast: off in fp32, else to bf16 or fp16."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class Trainer:
    """The loop's machinery for one objective on this rank: the modules on the device (frozen ones in eval mode,
    without gradients), one AdamW per optimizer name with the paper's weight-decay groups, the fp16 gradient scaler,
    the EMA and the DDP wrappers. `step` is one optimisation step; bench.train.loop.train runs it over the schedule
    with checkpoints, and the speed benchmark (bench.speed.training) times it on a fixed batch.

    `state` (a checkpoint's payload, see `state_dict`) is loaded before the modules are wrapped for DDP."""

    def __init__(
        self, objective: Objective, cfg: LoopConfig, info: D.DistInfo | None = None, state: dict | None = None
    ):
        self.objective, self.cfg = objective, cfg
        self.info = info or D.DistInfo()
        self.device = device = self.info.device
        for m in (*objective.modules.values(), *objective.frozen.values()):
            m.to(device)
        for m in objective.frozen.values():
            m.eval().requires_grad_(False)
        self.optimizers = {
            name: torch.optim.AdamW(
                param_groups(
                    m,
                    objective.optim[name].weight_decay,
                    functools.partial(objective.part_of, name) if objective.part_of else None,
                ),
                lr=objective.optim[name].lr,
                betas=objective.optim[name].betas,
            )
            for name, m in objective.modules.items()
        }
        self.precision = D.runnable_precision(cfg.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.ema = (
            EMA(objective.modules[objective.ema_of], cfg.ema_max_decay)
            if (objective.ema_of and cfg.ema_max_decay > 0)
            else None
        )
        # fp16 steps skipped for a non-finite loss or gradient, per optimizer: in all, and in a row up to now
        self.skips = {name: {"total": 0, "in_a_row": 0} for name in objective.modules}
        self.save_requested = False  # this rank's wish to save at the next step boundary (signal, wall time)
        self.save_agreed = None  # the ranks' answer, read with the step's first non-finite check (None: not asked)
        if state is not None:
            self.load_state_dict(state)
        self.wrapped = {
            name: DistributedDataParallel(m, device_ids=[device.index] if device.type == "cuda" else None)
            if self.info.distributed and any(p.requires_grad for p in m.parameters())
            else m
            for name, m in objective.modules.items()
        }
        for m in objective.modules.values():
            m.train()

    def state_dict(self) -> dict:
        """Weights, optimizer and scaler states, EMA and the objective's extra state."""
        return {
            "modules": {n: m.state_dict() for n, m in self.objective.modules.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.shadow if self.ema is not None else {},
            "extra": self.objective.extra_state(),
            "skips": copy.deepcopy(self.skips),
        }

    def load_state_dict(self, state: dict) -> None:
        for name, m in self.objective.modules.items():
            m.load_state_dict(state["modules"][name])
            self.optimizers[name].load_state_dict(state["optimizers"][name])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.shadow = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.objective.load_extra_state(state["extra"])
        self.skips.update(copy.deepcopy(state.get("skips", {})))  # a checkpoint written before skips were counted

    def step(self, step: int, batch, logs: bool = True) -> dict[str, float]:
        """One optimisation step at schedule position `step` on this rank's `batch`: each optimizer active at
        `step`, in order (learning rate, the loss summed over grad_accum micro-batches, unscaling, clipping, one
        non-finite check of the loss and gradient on every rank, the update), then the EMA. Returns the step's logs
        (`logs` False: none, and nothing read from the device but the check).

        A non-finite step raises NonFiniteLossError, except in fp16, where it is skipped with the gradient scaler
        backing off, counted ("<name>/skipped_steps") and stops the run after cfg.max_consecutive_skips in a row."""
        objective, cfg = self.objective, self.cfg
        micro = _split(batch, cfg.grad_accum)
        values: dict = {}  # on the device until _read: sums of tensors and numbers, lists of deferred values
        cache: list[dict] = [{} for _ in micro]
        self.save_agreed = None
        for name, opt in self.optimizers.items():
            if not objective.active(name, step):
                continue
            start = objective.schedule_start.get(name, 0)
            for group in opt.param_groups:
                factor = objective.lr_factor(group.get("part", ""), step)
                group["lr"] = lr_at(step - start, cfg.steps - start, objective.optim[name]) * factor
            opt.zero_grad(set_to_none=True)
            bad = torch.zeros((), dtype=torch.bool, device=self.device)
            for i, mb in enumerate(micro):
                sync = (i == len(micro) - 1) or not isinstance(self.wrapped[name], DistributedDataParallel)
                ctx = nullcontext() if sync else self.wrapped[name].no_sync()
                with ctx:
                    with _autocast(self.device, self.precision):
                        loss, mb_logs = objective.loss(name, self.wrapped, mb, step, cache[i])
                    bad = bad | ~torch.isfinite(loss.detach()).all()
                    self.scaler.scale(loss / len(micro)).backward()
                if logs:
                    for k, v in mb_logs.items():
                        _accumulate(values, k, v, len(micro))
            self.scaler.unscale_(opt)
            clip = objective.optim[name].grad_clip
            params = [p for p in objective.modules[name].parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else _grad_norm(params, self.device)
            if self._nonfinite(bad | ~torch.isfinite(norm)):
                self._skip(name, step, values, "loss" if bad.item() else "gradient")
            else:
                self.scaler.step(opt)
                self.scaler.update()
                self.skips[name]["in_a_row"] = 0
            if logs:
                if clip > 0:
                    values[f"{name}/grad_norm"] = norm
                values[f"{name}/lr"] = opt.param_groups[0]["lr"]
                if self.precision == "fp16":
                    values[f"{name}/skipped_steps"] = self.skips[name]["total"]
        if self.ema is not None:
            self.ema.update(objective.modules[objective.ema_of], step)
        return _read(values) if logs else {}

    def _nonfinite(self, bad: torch.Tensor) -> bool:
        """Whether any rank's loss or gradient is non-finite: the update's one read from the device, which also
        carries the ranks' save request (the first check of a step answers it for all ranks)."""
        if not self.info.distributed:
            return bool(bad.item())
        flags = torch.stack([bad.float(), torch.tensor(float(self.save_requested), device=self.device)])
        bad_ranks, saving_ranks = D.all_reduce_sum(flags).tolist()
        if self.save_agreed is None:
            self.save_agreed = saving_ranks > 0
        return bad_ranks > 0

    def _skip(self, name: str, step: int, values: dict, what: str) -> None:
        """A non-finite update of `name` (`what`: its "loss", or only its "gradient"): fp16 skips it and backs the
        scale off (the scaler's own rule, its growth count restarted), stopping after cfg.max_consecutive_skips in a
        row; other precisions stop at once."""
        if self.precision != "fp16":
            raise NonFiniteLossError(f"non-finite {name} {what} at step {step} in {self.precision} ({_read(values)})")
        state = self.scaler.state_dict()
        state.update(scale=state["scale"] * state["backoff_factor"], _growth_tracker=0)
        self.scaler.update(state["scale"])  # ends this update (the scaler's record of its unscaling)
        self.scaler.load_state_dict(state)
        count = self.skips[name]
        count["total"] += 1
        count["in_a_row"] += 1
        logger.warning(
            "step %d: non-finite %s %s in fp16: update skipped, loss scale now %g (%d in a row)",
            step,
            name,
            what,
            state["scale"],
            count["in_a_row"],
        )
        if count["in_a_row"] >= self.cfg.max_consecutive_skips:
            raise NonFiniteLossError(
                f"{count['in_a_row']} fp16 steps in a row (the last at step {step}) had a non-finite {name} loss or "
                f"gradient, each skipped with the gradient scaler backing off (loss scale now {state['scale']:g}): "
                f"stopping at LoopConfig.max_consecutive_skips={self.cfg.max_consecutive_skips}. The forward itself "
                "may overflow in fp16: try precision bf16 or fp32, or a lower learning rate"
            )


def _grad_norm(params: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The total L2 norm of the gradients (what clipping computes), for the non-finite check without clipping."""
    if not params:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))


def _accumulate(values: dict, key: str, value, parts: int) -> None:
    """Add one micro-batch's log value to the step's mean over `parts` micro-batches, without reading the device:
    tensors and numbers are summed, deferred values (functions) kept to be called by _read."""
    if callable(value):
        values.setdefault(key, []).append((value, parts))
    else:
        value = value.detach().float().reshape(()) if isinstance(value, torch.Tensor) else float(value)
        values[key] = values.get(key, 0.0) + value / parts


def _read(values: dict) -> dict[str, float]:
    """The step's log values as numbers: deferred values called, every tensor brought to the host in one copy."""
    out: dict = {}
    for k, v in values.items():
        out[k] = sum(float(f()) / parts for f, parts in v) if isinstance(v, list) else v
    tensors = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
    if tensors:
        host = torch.stack([out[k].float().to(out[tensors[0]].device) for k in tensors]).tolist()
        out.update(zip(tensors, host, strict=True))
    return {k: float(v) for k, v in out.items()}


def _split(batch, parts: int) -> list:
    """Split a batch (tensor, or tuple/list/dict of tensors) into `parts` micro-batches along dim 0."""
    if parts == 1:
        return [batch]
    if isinstance(batch, torch.Tensor):
        if len(batch) % parts:
            raise ValueError(f"per-rank batch of {len(batch)} does not split into {parts} micro-batches")
        return list(batch.chunk(parts))
    if isinstance(batch, dict):
        split = {k: _split(v, parts) for k, v in batch.items()}
        return [{k: split[k][i] for k in batch} for i in range(parts)]
    split = [_split(v, parts) for v in batch]
    return [type(batch)(s[i] for s in split) for i in range(parts)]
