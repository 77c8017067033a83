"""Quantisers for TiTok latents laid out [B, C, 1, K]: a VQ codebook and a diagonal-Gaussian (VAE) posterior."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def full_precision(encode):
    """Decorate a model's `encode(images, ...)`: it runs with autocast off whatever context the caller is in, on
    images cast to the model's weight dtype (fp32). Frozen encodes give training targets and generator tokens, which
    the reference computes outside autocast; a half-precision encoder flips near-tied codes."""

    @functools.wraps(encode)
    def wrapper(self, images: torch.Tensor, *args, **kwargs):
        with torch.autocast(images.device.type, enabled=False):
            return encode(self, images.to(next(self.parameters()).dtype), *args, **kwargs)

    return wrapper


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (squared L2) for each row of z: [N, C] x [V, C] -> [N]."""
    distances = z.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * torch.einsum("nc,vc->nv", z, codebook)
    return distances.argmin(dim=1)


@dataclass
class QuantizerOutput:
    z_quantized: torch.Tensor  # [B, C, 1, K], straight-through
    indices: torch.Tensor | None  # [B, K] (VQ) or None (VAE)
    loss: torch.Tensor  # quantiser loss: commitment + codebook (VQ) or KL (VAE)
    commitment_loss: torch.Tensor | None = None
    codebook_loss: torch.Tensor | None = None
    posterior_mean: torch.Tensor | None = None  # VAE only, [B, C, 1, K]
    posterior_logvar: torch.Tensor | None = None


class VectorQuantizer(nn.Module):
    """Nearest-neighbour VQ with a gradient-learned codebook and a straight-through estimator.

    With `use_l2_norm` both the inputs and the codebook rows are L2-normalised (cosine lookup) and the
    returned codes are normalised rows; commitment = beta * |sg(zq) - z|^2, codebook = |zq - sg(z)|^2.
    Runs in fp32 whatever the surrounding autocast.
    """

    def __init__(self, codebook_size: int, token_size: int, commitment_cost: float = 0.25, use_l2_norm: bool = False):
        super().__init__()
        self.commitment_cost = commitment_cost
        self.use_l2_norm = use_l2_norm
        # a training aid (bench stage 1's continuous_steps): the latents pass unquantised, the loss is zero
        self.continuous = False
        self.embedding = nn.Embedding(codebook_size, token_size)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    @property
    def codebook_size(self) -> int:
        return self.embedding.num_embeddings

    def codebook(self) -> torch.Tensor:
        weight = self.embedding.weight.float()
        return F.normalize(weight, dim=-1) if self.use_l2_norm else weight

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for integer ids [B, K] -> [B, C, 1, K]."""
        return self.codebook()[indices].permute(0, 2, 1).unsqueeze(2)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            b, c, _, k = z.shape
            flat = z.permute(0, 2, 3, 1).reshape(-1, c)
            if self.use_l2_norm:
                flat = F.normalize(flat, dim=-1)
            codebook = self.codebook()
            indices = nearest_code(flat, codebook)
            if self.continuous:
                zero = 0.0 * self.embedding.weight.sum()  # keeps the codebook in the graph (DDP expects its grad)
                z_out = flat.reshape(b, 1, k, c).permute(0, 3, 1, 2)
                return QuantizerOutput(z_out, indices.reshape(b, k), zero, zero, zero)
            zq = codebook[indices]
            commitment = self.commitment_cost * F.mse_loss(zq.detach(), flat)
            codebook_loss = F.mse_loss(zq, flat.detach())
            zq = flat + (zq - flat).detach()
            zq = zq.reshape(b, 1, k, c).permute(0, 3, 1, 2)
            return QuantizerOutput(zq, indices.reshape(b, k), commitment + codebook_loss, commitment, codebook_loss)

    @torch.no_grad()
    def init_codebook(self, z: torch.Tensor, iters: int = 20, generator: torch.Generator | None = None) -> None:
        """k-means of the latents z [B, C, 1, K] (cosine with use_l2_norm) as the codebook: k-means++ seeding (each
        seed drawn with probability ~ squared distance to the nearest seed so far), then `iters` Lloyd steps; a
        code left empty keeps its previous position."""
        flat = z.detach().float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        if self.use_l2_norm:
            flat = F.normalize(flat, dim=-1)
        norm = (lambda c: F.normalize(c, dim=-1)) if self.use_l2_norm else (lambda c: c)
        codes = flat[torch.randint(len(flat), (1,), generator=generator).to(flat.device)]
        while len(codes) < self.codebook_size:
            d2 = torch.cdist(flat, codes).min(1).values.pow(2).cpu().double()
            pick = torch.multinomial(d2 if d2.sum() > 0 else torch.ones_like(d2), 1, generator=generator)
            codes = torch.cat([codes, flat[pick.to(flat.device)]])
        for _ in range(iters):
            assign = nearest_code(flat, norm(codes))
            sums = torch.zeros_like(codes).index_add_(0, assign, flat)
            counts = torch.bincount(assign, minlength=self.codebook_size).unsqueeze(1)
            codes = torch.where(counts > 0, sums / counts.clamp(min=1), codes)
        self.embedding.weight.copy_(codes.to(self.embedding.weight.dtype))


class DiagonalGaussianQuantizer(nn.Module):
    """VAE bottleneck: the encoder emits [mean, logvar] along channels; logvar is clamped to [-30, 20].

    `sample=True` draws z = mean + std * eps; otherwise z is the posterior mean (the mode).
    The loss is the KL to N(0, I), summed over channels and tokens and averaged over the batch.
    """

    def forward(
        self, z: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):
            mean, logvar = z.float().chunk(2, dim=1)
            logvar = logvar.clamp(-30.0, 20.0)
            if sample:
                eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                out = mean + torch.exp(0.5 * logvar) * eps
            else:
                out = mean
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
            return QuantizerOutput(out, None, kl, posterior_mean=mean, posterior_logvar=logvar)
