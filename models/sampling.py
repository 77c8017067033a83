"""MaskGIT training-time masking and the iterative sampler with classifier-free guidance.

Sampler, step s = 0..T-1 with r = (s+1)/T:
- guidance: "constant" g; "linear" g*s/T (cond + w*(cond - uncond), so step 0 has no guidance);
  "power-cosine" (g-1)*(1 - cos(pi*(s/T)^pow))/2 + 1 (uncond + w*(cond - uncond));
- optional softmax-temperature annealing: logits / (0.5 + 0.8*(1 - r));
- Gumbel-max choice with noise scaled by the annealed temperature tau = randomize_temperature*(1 - r);
- the floor(K*arccos(r)/(pi/2)) least confident new tokens (confidence = chosen logit + tau*Gumbel,
  +inf for fixed tokens) are masked again, at least one and leaving one new token; the last step keeps all.
  As the reference, the count is the first row's for the whole batch (rows can differ only after ties).

Dtypes, as the reference's ImageBert.generate (official repository, modeling/maskgit.py):
- guidance, annealing and the token argmax run in the logits' dtype (float32 or float64; half precisions are
  upcast to float32 first, a choice of the fast paths, which the reference never runs);
- the chosen logits are cast to float32 before the confidence, so the Gumbel noise, the sort and the
  `confidence <= cut_off` test run in float32 whatever the model's dtype. Every position tied with the cut-off
  at float32 resolution is re-masked, which happens often with full-size float64 models: ranking in float64
  re-masks fewer positions and diverges from the reference's samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

GUIDANCE_DECAYS = ("constant", "linear", "power-cosine")


@dataclass(frozen=True)
class SamplerSettings:
    num_steps: int = 8
    guidance_scale: float = 3.0
    guidance_decay: str = "constant"
    guidance_scale_pow: float = 3.0
    randomize_temperature: float = 1.0
    softmax_temperature_annealing: bool = True

    def __post_init__(self):
        if self.guidance_decay not in GUIDANCE_DECAYS:
            raise ValueError(f"guidance_decay={self.guidance_decay!r}; expected one of {GUIDANCE_DECAYS}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps} must be >= 1")

    def updated(self, **overrides) -> SamplerSettings:
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown sampler settings {sorted(unknown)}; known: {sorted(self.__dataclass_fields__)}")
        return replace(self, **overrides)


def guidance_weight(settings: SamplerSettings, step: int) -> float:
    t = step / settings.num_steps
    if settings.guidance_decay == "constant":
        return settings.guidance_scale
    if settings.guidance_decay == "linear":
        return settings.guidance_scale * t
    return (settings.guidance_scale - 1) * (1 - math.cos(math.pi * t**settings.guidance_scale_pow)) / 2 + 1


# One generator for the batch, or one per row (then a sample's noise does not depend on its batch).
Generators = torch.Generator | list[torch.Generator] | None


def _uniform(shape, like: torch.Tensor, generator: Generators) -> torch.Tensor:
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.rand(shape[1:], generator=g, device=like.device) for g in generator])
    return torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)


def _gumbel(shape, like: torch.Tensor, generator: Generators) -> torch.Tensor:
    u = _uniform(shape, like, generator)
    return -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))


# logits_fn(ids [B, K], drop_labels: bool) -> logits [B, K, V] (conditional or unconditional)
LogitsFn = Callable[[torch.Tensor, bool], torch.Tensor]
# batched_logits_fn(ids [B, K]) -> (cond, uncond) in one forward, for the fast path
BatchedLogitsFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def sample_tokens(
    logits_fn: LogitsFn,
    batch: int,
    num_tokens: int,
    mask_id: int,
    settings: SamplerSettings,
    device: torch.device | str = "cpu",
    generator: Generators = None,
    batched_logits_fn: BatchedLogitsFn | None = None,
) -> torch.Tensor:
    """Iterative MaskGIT decoding from an all-mask sequence. Returns token ids [batch, num_tokens].
    `generator`: one torch.Generator for the batch, or a list with one per row."""
    ids = torch.full((batch, num_tokens), mask_id, dtype=torch.long, device=device)
    for step in range(settings.num_steps):
        ratio = (step + 1) / settings.num_steps
        tau = settings.randomize_temperature * (1.0 - ratio)
        is_mask = ids == mask_id
        weight = guidance_weight(settings, step)
        if weight == 0:
            logits = logits_fn(ids, False)
        else:
            if batched_logits_fn is not None:
                cond, uncond = batched_logits_fn(ids)
            else:
                cond, uncond = logits_fn(ids, False), logits_fn(ids, True)
            base = uncond if settings.guidance_decay == "power-cosine" else cond
            logits = base + (cond - uncond) * weight
        if logits.dtype in (torch.float16, torch.bfloat16):  # upcast half precisions only: float64 stays (parity)
            logits = logits.float()
        if settings.softmax_temperature_annealing:
            logits = logits / (0.5 + 0.8 * (1.0 - ratio))
        noisy = logits + tau * _gumbel(logits.shape, logits, generator) if tau > 0 else logits
        sampled = noisy.argmax(dim=-1)
        chosen_logit = logits.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
        sampled = torch.where(is_mask, sampled, ids)
        if step == settings.num_steps - 1:
            ids = sampled
            break
        # ranked in float32 whatever the logits' dtype, as the reference (module docstring)
        confidence = torch.where(is_mask, chosen_logit, torch.full_like(chosen_logit, math.inf)).float()
        if tau > 0:
            confidence = confidence + tau * _gumbel(confidence.shape, confidence, generator)
        target = math.floor(num_tokens * math.acos(ratio) / (math.pi / 2))
        # one count for the whole batch, from the first row, as the reference: rows differ only after ties
        mask_len = (is_mask[:1].sum(-1, keepdim=True) - 1).clamp(max=target).clamp(min=1).expand(batch, 1)
        cut_off = confidence.sort(dim=-1).values.gather(-1, mask_len - 1)
        ids = torch.where(confidence <= cut_off, torch.full_like(sampled, mask_id), sampled)
    return ids


def random_masking(
    ids: torch.Tensor, mask_id: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskGIT training corruption: per sample t ~ U(0, 1), mask round(K * arccos(t)/(pi/2)) >= 1 random
    positions. Returns (masked ids, boolean mask [B, K])."""
    b, k = ids.shape
    t = torch.rand(b, generator=generator, device=ids.device)
    ratio = (torch.acos(t) / (math.pi / 2)).clamp_min(1e-6)
    num_masked = (k * ratio).round().clamp(min=1)
    ranks = torch.rand(b, k, generator=generator, device=ids.device).argsort(dim=-1).argsort(dim=-1)
    mask = ranks < num_masked.unsqueeze(-1)
    return torch.where(mask, torch.full_like(ids, mask_id), ids), mask
