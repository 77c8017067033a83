"""The optimiser's pieces every stage shares: its settings, AdamW parameter groups with the reference's weight-decay
exclusions, the warmup + cosine learning rate, and the EMA of the weights."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-4
    warmup_steps: int = 10_000
    end_lr: float = 1e-5
    grad_clip: float = 1.0  # <= 0 disables clipping


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
