"""The training loop every stage shares: AdamW with the paper's weight-decay exclusions, warmup + cosine,
gradient clipping, EMA weights, bf16/fp16 autocast, gradient accumulation, DDP, periodic atomic checkpoints
with exact resume, and a stop on non-finite losses that keeps the last good checkpoint.

A stage describes itself as an `Objective`: which modules train under which optimizer (updated in order, e.g.
the tokenizer and then the discriminator), and the loss of each. The loop owns everything else: `Trainer` holds
its state and takes one optimisation step, `train` runs the steps with checkpoints and resume.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bench.core import dist as D
from bench.core.io import atomic_file

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.previous.pt"  # the resume point before it, kept for when checkpoint.pt is damaged


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept on disk."""


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
    log_every: int = 50
    seed: int = 42

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps={self.steps} must be >= 0")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision={self.precision!r}: expected fp32, bf16 or fp16")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"batch_size={self.batch_size} and grad_accum={self.grad_accum} must be >= 1")


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
    return [{"params": groups.get((part, decays), []), "weight_decay": weight_decay if decays else 0.0, "part": part}
            for part in parts for decays in (True, False)]


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
    micro-batch (e.g. reconstructions for the discriminator)."""

    modules: dict[str, nn.Module]
    optim: dict[str, OptimConfig]
    loss: Callable[..., tuple[torch.Tensor, dict[str, float]]]
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


def _rng_state() -> dict:
    # numpy's state holds an ndarray, which torch.load(weights_only=True) refuses: store its parts as tensors
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                       gauss], "python": random.getstate()}
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
    the model files' digest (models.checkpoints.tensor_digest) covers all of it: weights, step, RNG states."""
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
    from models.checkpoints import DIGEST_KEY, tensor_digest

    if keep_previous and path.exists():
        os.replace(path, path.with_name(PREVIOUS_CHECKPOINT))
    atomic_torch_save({**state, DIGEST_KEY: tensor_digest(_as_tensors(state))}, path)


def load_resume_point(out: Path, say: bool = True) -> tuple[dict | None, Path | None]:
    """The newest good resume point in `out` (CHECKPOINT, else PREVIOUS_CHECKPOINT) and its file; (None, None):
    start from step 0. A damaged one (unreadable, or its content not matching its sha256) is named on stderr
    (`say`), with what happens instead. Files written before the sha256 existed load unchecked."""
    from models.checkpoints import DIGEST_KEY, tensor_digest

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
                print(f"warning: the resume point {path} is damaged ({type(err).__name__}: {err}); it is not used",
                      file=sys.stderr, flush=True)
            continue
        if damaged and say:
            print(f"warning: resuming from the previous resume point {path} (step {state['step']})",
                  file=sys.stderr, flush=True)
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

    def __init__(self, objective: Objective, cfg: LoopConfig, info: D.DistInfo | None = None,
                 state: dict | None = None):
        self.objective, self.cfg = objective, cfg
        self.info = info or D.DistInfo()
        self.device = device = self.info.device
        for m in (*objective.modules.values(), *objective.frozen.values()):
            m.to(device)
        for m in objective.frozen.values():
            m.eval().requires_grad_(False)
        self.optimizers = {name: torch.optim.AdamW(
            param_groups(m, objective.optim[name].weight_decay,
                         functools.partial(objective.part_of, name) if objective.part_of else None),
            lr=objective.optim[name].lr, betas=objective.optim[name].betas) for name, m in objective.modules.items()}
        self.precision = D.runnable_precision(cfg.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.ema = EMA(objective.modules[objective.ema_of], cfg.ema_max_decay) if (
            objective.ema_of and cfg.ema_max_decay > 0) else None
        if state is not None:
            self.load_state_dict(state)
        self.wrapped = {name: DistributedDataParallel(m, device_ids=[device.index] if device.type == "cuda" else None)
                        if self.info.distributed and any(p.requires_grad for p in m.parameters()) else m
                        for name, m in objective.modules.items()}
        for m in objective.modules.values():
            m.train()

    def state_dict(self) -> dict:
        """Weights, optimizer and scaler states, EMA and the objective's extra state."""
        return {"modules": {n: m.state_dict() for n, m in self.objective.modules.items()},
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "scaler": self.scaler.state_dict(),
                "ema": self.ema.shadow if self.ema is not None else {},
                "extra": self.objective.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        for name, m in self.objective.modules.items():
            m.load_state_dict(state["modules"][name])
            self.optimizers[name].load_state_dict(state["optimizers"][name])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.shadow = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.objective.load_extra_state(state["extra"])

    def step(self, step: int, batch) -> dict[str, float]:
        """One optimisation step at schedule position `step` on this rank's `batch`: each optimizer active at
        `step`, in order (learning rate, the loss summed over grad_accum micro-batches, a non-finite check on every
        rank, unscaling, clipping, the update), then the EMA. Returns the step's logs."""
        objective, cfg = self.objective, self.cfg
        micro = _split(batch, cfg.grad_accum)
        logs: dict[str, float] = {}
        cache: list[dict] = [{} for _ in micro]
        nonfinite = False
        for name, opt in self.optimizers.items():
            if not objective.active(name, step):
                continue
            for group in opt.param_groups:
                factor = objective.lr_factor(group.get("part", ""), step)
                group["lr"] = lr_at(step, cfg.steps, objective.optim[name]) * factor
            opt.zero_grad(set_to_none=True)
            for i, mb in enumerate(micro):
                sync = (i == len(micro) - 1) or not isinstance(self.wrapped[name], DistributedDataParallel)
                ctx = nullcontext() if sync else self.wrapped[name].no_sync()
                with ctx:
                    with _autocast(self.device, self.precision):
                        loss, mb_logs = objective.loss(name, self.wrapped, mb, step, cache[i])
                    nonfinite |= not torch.isfinite(loss.detach()).all().item()
                    self.scaler.scale(loss / len(micro)).backward()
                for k, v in mb_logs.items():
                    logs[k] = logs.get(k, 0.0) + float(v) / len(micro)
            if D.any_rank(nonfinite, self.device):
                raise NonFiniteLossError(f"non-finite {name} loss at step {step} ({logs})")
            self.scaler.unscale_(opt)
            clip = objective.optim[name].grad_clip
            if clip > 0:
                logs[f"{name}/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(objective.modules[name].parameters(),
                                                                                 clip))
            self.scaler.step(opt)
            self.scaler.update()
            logs[f"{name}/lr"] = opt.param_groups[0]["lr"]
        if self.ema is not None:
            self.ema.update(objective.modules[objective.ema_of], step)
        return logs


def train(objective: Objective, batches: Callable[[int], Iterator], cfg: LoopConfig, out_dir: str | os.PathLike,
          info: D.DistInfo | None = None, log: Callable[[dict, int], None] | None = None) -> TrainResult:
    """Run (or resume) training to cfg.steps.

    batches(start_step) -> iterator of this rank's batches for steps start_step, start_step + 1, ... (each of
    batch_size / world_size samples); the loop splits each into grad_accum micro-batches.
    A checkpoint in out_dir is resumed exactly (weights, optimizer, EMA, RNG, data position).
    """
    info = info or D.DistInfo()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(cfg.seed, info.rank)
    ckpt_path = out / CHECKPOINT
    ckpt, resumed_path = load_resume_point(out, say=info.is_main)
    keep_previous = resumed_path == ckpt_path  # a damaged checkpoint.pt is overwritten, never kept as the previous
    trainer = Trainer(objective, cfg, info, ckpt)
    start, prior_wall_s = 0, 0.0  # wall time of earlier attempts (a requeued job counts all of its time)
    if ckpt is not None:
        _set_rng_state(ckpt["rng"][min(info.rank, len(ckpt["rng"]) - 1)])
        start, prior_wall_s = ckpt["step"], ckpt.get("wall_s", 0.0)

    def save_checkpoint(step: int) -> None:
        rng = [None] * info.world_size
        if info.distributed:
            torch.distributed.all_gather_object(rng, _rng_state())
        else:
            rng = [_rng_state()]
        nonlocal keep_previous
        if info.is_main:
            save_resume_point({"step": step, **trainer.state_dict(), "rng": rng,
                               "wall_s": prior_wall_s + time.time() - t0}, ckpt_path, keep_previous)
        keep_previous = True
        D.barrier()

    logs: dict[str, float] = {}
    t0 = time.time()
    it = batches(start)
    for step in range(start, cfg.steps):
        try:
            logs = trainer.step(step, next(it))
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"{err}; the last good checkpoint "
                                     f"({ckpt_path if ckpt_path.exists() else 'none yet'}) is kept") from None
        done = step + 1
        if log is not None and info.is_main and (done % cfg.log_every == 0 or done == cfg.steps):
            log(dict(logs, steps_per_s=(done - start) / max(time.time() - t0, 1e-9)), done)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_checkpoint(done)

    final = objective.modules[objective.ema_of] if objective.ema_of else None
    if final is not None:
        final = _cpu_copy(final)
        if trainer.ema is not None:
            trainer.ema.copy_to(final)
    return TrainResult(cfg.steps, prior_wall_s + time.time() - t0, logs, final, start, trainer.precision)


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
