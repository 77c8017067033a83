"""The training loop every stage shares: AdamW with the paper's weight-decay exclusions, warmup + cosine,
gradient clipping, EMA weights, bf16/fp16 autocast, gradient accumulation, DDP, atomic checkpoints (every
`checkpoint_every` steps, every `checkpoint_every_s` seconds, and at the next step boundary after the preemption /
time-limit signal) with exact resume, and non-finite steps: fp16 skips them (the gradient scaler backs off) and stops
after `max_consecutive_skips` in a row; bf16/fp32 stop at the first, keeping the last good checkpoint.

A stage describes itself as an `Objective`: which modules train under which optimizer (updated in order, e.g.
the tokenizer and then the discriminator), and the loss of each. The loop owns everything else: `Trainer` holds
its state and takes one optimisation step, `train` runs the steps with checkpoints and resume.

Host syncs: a step reads one flag per optimizer update from the device (its non-finite check, fused with the
ranks' save request); logged values stay on the device and are read together on log steps only.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bench.core import dist as D
from bench.core.io import atomic_file, atomic_write_json

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.previous.pt"  # the resume point before it, kept for when checkpoint.pt is damaged
PROGRESS = "progress.json"  # the wall time the loop has run, rewritten every HEARTBEAT_S: what a kill loses
HEARTBEAT_S = 60.0
# the signal SLURM sends through submitit before a time limit and on preemption (submitit's default): the loop saves
# at the next step boundary, then hands the signal to the handler it stood in for (submitit's requeue and exit)
SAVE_SIGNAL = signal.SIGUSR2
logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient (fp16: in too many steps in a row); the last good checkpoint is
    kept on disk."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-4
    warmup_steps: int = 10_000
    end_lr: float = 1e-5
    grad_clip: float = 1.0  # <= 0 disables clipping


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


# ---- optimisation pieces -------------------------------------------------------------------------------------
_NO_DECAY = ("ln", "bias", "latent_tokens", "mask_token", "embedding", "norm", "gamma", "embed")


def param_groups(module: nn.Module, weight_decay: float, part_of: Callable[[str], str] | None = None) -> list[dict]:
    """AdamW groups: no weight decay for tensors with ndim < 2 or whose name contains a no-decay word
    (the reference's rule; it also exempts patch_embed and decoder_embed weights). With `part_of` (parameter name
    -> part), one decay and one no-decay group per part, each tagged with its "part" (for Objective.lr_factor)."""
    groups: dict[tuple[str, bool], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decays = not (p.ndim < 2 or any(w in name for w in _NO_DECAY))
        groups.setdefault((part_of(name) if part_of else "", decays), []).append(p)
    parts = sorted({part for part, _ in groups}) or [""]
    return [
        {"params": groups.get((part, decays), []), "weight_decay": weight_decay if decays else 0.0, "part": part}
        for part in parts
        for decays in (True, False)
    ]


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.end_lr at `total` steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.end_lr + 0.5 * (cfg.lr - cfg.end_lr) * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a module's floating-point state, decay min((1+s)/(10+s), max_decay)."""

    def __init__(self, module: nn.Module, max_decay: float):
        self.max_decay = max_decay
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        decay = min((1 + step) / (10 + step), self.max_decay)
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), 1 - decay)

    def copy_to(self, module: nn.Module) -> None:
        state = module.state_dict()
        module.load_state_dict({k: self.shadow[k].to(v.dtype) if k in self.shadow else v for k, v in state.items()})


# ---- the objective a stage provides ----------------------------------------------------------------------------
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


@dataclass
class TrainResult:
    steps: int
    wall_s: float
    final_logs: dict[str, float]
    model: nn.Module  # the EMA (or raw) weights of objective.ema_of, on CPU
    resumed_from: int = 0  # the step of the checkpoint this run started from (0: from scratch)
    precision: str = "fp32"  # what ran (D.runnable_precision): the asked-for autocast, or fp32 where it is slow
    lost_s: float = 0.0  # of wall_s: time earlier attempts ran past their last checkpoint (work done again)


def _rng_state() -> dict:
    # numpy's state holds an ndarray, which torch.load(weights_only=True) refuses: store its parts as tensors
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj, path: Path) -> None:
    with atomic_file(path) as f:
        torch.save(obj, f)


def _as_tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every leaf of a resume point as a tensor named by its path (a non-tensor as the bytes of its repr), so that
    the model files' digest (models.checkpoint_format.tensor_digest) covers all of it: weights, step, RNG states."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {prefix: torch.frombuffer(bytearray(repr(tree).encode()), dtype=torch.uint8)}
    return {k: v for key, value in items for k, v in _as_tensors(value, f"{prefix}/{key}").items()}


def save_resume_point(state: dict, path: Path, keep_previous: bool) -> None:
    """Write `state` with the sha256 of its content (DIGEST_KEY, as our model files carry); `keep_previous`: the
    resume point now at `path` is good, and becomes PREVIOUS_CHECKPOINT first."""
    from models.checkpoint_format import DIGEST_KEY, tensor_digest

    if keep_previous and path.exists():
        os.replace(path, path.with_name(PREVIOUS_CHECKPOINT))
    atomic_torch_save({**state, DIGEST_KEY: tensor_digest(_as_tensors(state))}, path)


def load_resume_point(out: Path, say: bool = True) -> tuple[dict | None, Path | None]:
    """The newest good resume point in `out` (CHECKPOINT, else PREVIOUS_CHECKPOINT) and its file; (None, None):
    start from step 0. A damaged one (unreadable, or its content not matching its sha256) is named on stderr
    (`say`), with what happens instead. Files written before the sha256 existed load unchecked."""
    from models.checkpoint_format import DIGEST_KEY, tensor_digest

    damaged = False
    for path in (out / CHECKPOINT, out / PREVIOUS_CHECKPOINT):
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            digest = state.pop(DIGEST_KEY, None)
            if digest is not None and tensor_digest(_as_tensors(state)) != digest:
                raise ValueError("its content does not match the sha256 written with it (bit rot or a damaged copy)")
        except Exception as err:  # a torn zip, a bad pickle, a digest mismatch
            damaged = True
            if say:
                print(
                    f"warning: the resume point {path} is damaged ({type(err).__name__}: {err}); it is not used",
                    file=sys.stderr,
                    flush=True,
                )
            continue
        if damaged and say:
            print(
                f"warning: resuming from the previous resume point {path} (step {state['step']})",
                file=sys.stderr,
                flush=True,
            )
        return state, path
    if damaged and say:
        print(f"warning: no good resume point: the stage restarts from step 0 in {out}", file=sys.stderr, flush=True)
    return None, None


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _seed_everything(seed: int, rank: int) -> None:
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)


class Trainer:
    """The loop's machinery for one objective on this rank: the modules on the device (frozen ones in eval mode,
    without gradients), one AdamW per optimizer name with the paper's weight-decay groups, the fp16 gradient scaler,
    the EMA and the DDP wrappers. `step` is one optimisation step; `train` runs it over the schedule with
    checkpoints, and the speed benchmark (bench.speed.training) times it on a fixed batch.

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
            for group in opt.param_groups:
                factor = objective.lr_factor(group.get("part", ""), step)
                group["lr"] = lr_at(step, cfg.steps, objective.optim[name]) * factor
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
        _set_rng_state(ckpt["rng"][min(info.rank, len(ckpt["rng"]) - 1)])
        start, prior_wall_s, lost_s = ckpt["step"], ckpt.get("wall_s", 0.0), ckpt.get("lost_s", 0.0)
    ran = _progress_wall_s(out / PROGRESS)
    if ran > prior_wall_s:  # an earlier attempt ran past the checkpoint: that work is done again, its time lost
        prior_wall_s, lost_s = ran, lost_s + ran - prior_wall_s

    def wall_s() -> float:
        return prior_wall_s + time.time() - t0

    def heartbeat(step: int, wall: float | None = None) -> None:
        nonlocal last_beat
        last_beat = time.time()
        if info.is_main:
            atomic_write_json(out / PROGRESS, {"step": step, "wall_s": wall or wall_s(), "lost_s": lost_s})

    def save_checkpoint(step: int) -> None:
        rng = [None] * info.world_size
        if info.distributed:
            torch.distributed.all_gather_object(rng, _rng_state())
        else:
            rng = [_rng_state()]
        nonlocal keep_previous, last_save
        wall = wall_s()
        if info.is_main:
            save_resume_point(
                {"step": step, **trainer.state_dict(), "rng": rng, "wall_s": wall, "lost_s": lost_s},
                ckpt_path,
                keep_previous,
            )
        keep_previous = True
        last_save = time.time()
        heartbeat(step, wall)
        D.barrier()

    logs: dict[str, float] = {}
    t0 = last_save = last_beat = time.time()
    it = batches(start)
    with _signal_asks_to_save(SAVE_SIGNAL) as signalled:
        for step in range(start, cfg.steps):
            done = step + 1
            log_step = done % cfg.log_every == 0 or done == cfg.steps
            batch = next(it)
            asked = bool(signalled)
            trainer.save_requested = asked or (
                cfg.checkpoint_every_s > 0 and time.time() - last_save >= cfg.checkpoint_every_s
            )
            try:
                step_logs = trainer.step(step, batch, logs=log_step)
            except NonFiniteLossError as err:
                raise NonFiniteLossError(
                    f"{err}; the last good checkpoint ({ckpt_path if ckpt_path.exists() else 'none yet'}) is kept"
                ) from None
            if log_step:
                logs = step_logs
                if log is not None and info.is_main:
                    log(dict(logs, steps_per_s=(done - start) / max(time.time() - t0, 1e-9)), done)
            if not info.distributed:  # a signal during the step counts at once; across ranks, at the next check
                asked = bool(signalled)
                trainer.save_requested |= asked
            if done % cfg.checkpoint_every == 0 or done == cfg.steps or _agreed(trainer, info):
                save_checkpoint(done)
                if asked:  # saved: now what the signal was meant to do (submitit: requeue and exit)
                    signalled.pop()()
            elif time.time() - last_beat >= HEARTBEAT_S:
                heartbeat(done)

    final = objective.modules[objective.ema_of] if objective.ema_of else None
    if final is not None:
        final = _cpu_copy(final)
        if trainer.ema is not None:
            trainer.ema.copy_to(final)
    return TrainResult(cfg.steps, wall_s(), logs, final, start, trainer.precision, lost_s)


def _agreed(trainer: Trainer, info: D.DistInfo) -> bool:
    """Whether the ranks save at this step boundary: the answer read with the step's non-finite check, or, where no
    check ran, a read of its own."""
    if not info.distributed:
        return trainer.save_requested
    if trainer.save_agreed is None:
        return D.any_rank(trainer.save_requested, info.device)
    return trainer.save_agreed


def _progress_wall_s(path: Path) -> float:
    """The wall time an earlier attempt had run at its last heartbeat (0: none recorded)."""
    try:
        return float(json.loads(path.read_text())["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


@contextmanager
def _signal_asks_to_save(signum: int):
    """While training, `signum` asks for a save at the next step boundary instead of acting at once: the yielded
    list then holds a function that does what the signal would have done (calls the handler it arrived for, or the
    default action), which the loop calls after saving. Outside the main thread (no signal handlers) nothing
    changes."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    previous = signal.getsignal(signum)
    if previous is None:  # a handler installed from outside Python: left alone
        yield []
        return
    pending: list[Callable[[], None]] = []

    def deliver(frame) -> None:
        signal.signal(signum, previous)
        try:
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signum)
        finally:
            signal.signal(signum, ask)

    def ask(sig, frame) -> None:
        if not pending:
            pending.append(lambda: deliver(frame))

    signal.signal(signum, ask)
    try:
        yield pending
    finally:
        signal.signal(signum, previous)


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


def _cpu_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).cpu().eval()
