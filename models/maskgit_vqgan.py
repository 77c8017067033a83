"""MaskGIT-VQGAN: the proxy-code teacher of two-stage TiTok and the pixel decoder of its stage 2.

A convolutional f16 VQGAN (no attention): GroupNorm(32, eps 1e-6) + SiLU residual blocks, average-pool
downsampling, nearest x2 + conv upsampling, a plain (un-normalised) 1024 x 256 codebook. Images in [0, 1].
Parameter names follow the released `maskgit-vqgan-imagenet-f16-256.bin`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .quantizers import full_precision, nearest_code


@dataclass(frozen=True)
class VQGANConfig:
    hidden_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    codebook_size: int = 1024

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResBlock(nn.Module):
    """norm-SiLU-conv twice. When the width changes, the 1x1 shortcut is applied to the block's own
    output, not to its input (as in the JAX original; the released weights depend on it)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(out_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        residual = self.nin_shortcut(h) if hasattr(self, "nin_shortcut") else x
        return h + residual


class _Level(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, upsample: bool = False):
        super().__init__()
        self.block = nn.ModuleList(
            ResBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(num_blocks)
        )
        if upsample:
            self.upsample_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        widths = [cfg.hidden_channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        ins = [widths[0], *widths[:-1]]
        self.down = nn.ModuleList(_Level(i, o, cfg.num_res_blocks) for i, o in zip(ins, widths))
        self.mid = nn.ModuleList(ResBlock(widths[-1], widths[-1]) for _ in range(cfg.num_res_blocks))
        self.norm_out = _norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i, level in enumerate(self.down):
            for block in level.block:
                x = block(x)
            if i < len(self.down) - 1:
                x = F.avg_pool2d(x, 2)
        for block in self.mid:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        widths = [cfg.hidden_channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[-1], 3, padding=1)
        self.mid = nn.ModuleList(ResBlock(widths[-1], widths[-1]) for _ in range(cfg.num_res_blocks))
        # up[i] produces widths[i]; levels run from the coarsest (last) to the finest (up[0]).
        ins = [*widths[1:], widths[-1]]
        self.up = nn.ModuleList(
            _Level(ins[i], widths[i], cfg.num_res_blocks, upsample=i > 0) for i in range(len(widths))
        )
        self.norm_out = _norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for block in self.mid:
            x = block(x)
        for level in reversed(self.up):
            for block in level.block:
                x = block(x)
            if hasattr(level, "upsample_conv"):
                x = level.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(x)))


class PlainQuantizer(nn.Module):
    """The VQGAN's codebook: nearest neighbour in squared L2, no normalisation."""

    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code of each latent, searched in fp32 whatever the surrounding autocast."""
        b, c, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):
            flat = z.float().permute(0, 2, 3, 1).reshape(-1, c)
            return nearest_code(flat, self.embedding.weight.float()).reshape(b, h * w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """[B, h*w] ids -> [B, C, h, w] code vectors (square grid)."""
        b, n = codes.shape
        side = int(round(n**0.5))
        return self.embedding(codes).reshape(b, side, side, -1).permute(0, 3, 1, 2)

    def soft_lookup(self, probs: torch.Tensor) -> torch.Tensor:
        """Probability-weighted mix of code vectors: [B, V, h, w] -> [B, C, h, w] (TiTok stage 2)."""
        return torch.einsum("bvhw,vc->bchw", probs, self.embedding.weight.to(probs.dtype))


class MaskGITVQGAN(nn.Module):
    """Teacher: images [B, 3, H, W] in [0, 1] -> codes [B, (H/16)*(W/16)] -> images."""

    kind = "teacher"

    def __init__(self, config: VQGANConfig = VQGANConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantize = PlainQuantizer(config.codebook_size, config.z_channels)
        self.decoder = Decoder(config)

    @torch.no_grad()
    @full_precision
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> codes (stage 1's targets), in fp32 whatever the caller's autocast."""
        return self.quantize.codes(self.encoder(images))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Unclamped reconstruction from code ids."""
        return self.decoder(self.quantize.lookup(codes))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_codes(codes).clamp(0.0, 1.0)
