"""TiTok's ViT encoder and decoder, built bottom-up: attention, MLP, block, encoder, decoder.

Parameter names follow the released checkpoints (OpenCLIP-style blocks), so released TiTok weights
load without renaming. Images are in [0, 1]; tokens are laid out [B, C, 1, K] as in the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection (the layout of nn.MultiheadAttention)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x += attn(ln_1(x)); x += mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def _embedding(*shape: int, width: int) -> nn.Parameter:
    return nn.Parameter(width**-0.5 * torch.randn(*shape))


class TiTokEncoder(nn.Module):
    """Patches + K learnable latent tokens through a ViT; the last K outputs become the latent code.

    Sequence: [CLS, g*g patches, K latents]. `legacy_reshape` reproduces the released two-stage
    checkpoints' reshape-without-permute of the [B, K, W] latents before the 1x1 output conv.
    """

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        num_latent_tokens: int,
        out_channels: int,
        legacy_reshape: bool,
    ):
        super().__init__()
        grid = image_size // patch_size
        self.legacy_reshape = legacy_reshape
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.class_embedding = _embedding(1, width, width=width)
        self.positional_embedding = _embedding(grid * grid + 1, width, width=width)
        self.latent_token_positional_embedding = _embedding(num_latent_tokens, width, width=width)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(depth))
        self.ln_post = nn.LayerNorm(width)
        self.conv_out = nn.Conv2d(width, out_channels, kernel_size=1)

    def forward(self, images: torch.Tensor, latent_tokens: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, g*g, W]
        cls = self.class_embedding.to(x.dtype).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        latents = (latent_tokens + self.latent_token_positional_embedding).to(x.dtype).expand(b, -1, -1)
        num_latents = latents.shape[1]
        x = self.ln_pre(torch.cat([x, latents], dim=1))
        for block in self.transformer:
            x = block(x)
        x = self.ln_post(x[:, -num_latents:])  # [B, K, W]
        width = x.shape[-1]
        if self.legacy_reshape:
            x = x.reshape(b, width, num_latents, 1)  # reinterprets memory on purpose (see docstring)
        else:
            x = x.transpose(1, 2).reshape(b, width, num_latents, 1)
        return self.conv_out(x).reshape(b, -1, 1, num_latents)


class TiTokDecoder(nn.Module):
    """K latent tokens + g*g mask tokens through a ViT; the mask-token outputs become the image.

    Heads: "proxy" predicts logits over the MaskGIT-VQGAN codebook per grid cell (two-stage family);
    "pixel" predicts p*p*3 values per grid cell, depth-to-space, then a 3x3 conv (single-stage family).
    With `text_tokens` > 0 (TA-TiTok) projected text tokens are appended after the latents.
    """

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        num_latent_tokens: int,
        token_size: int,
        head: str,
        proxy_codebook_size: int = 1024,
        text_tokens: int = 0,
        text_dim: int = 768,
    ):
        super().__init__()
        grid = image_size // patch_size
        self.grid, self.patch_size, self.head = grid, patch_size, head
        self.decoder_embed = nn.Linear(token_size, width)
        self.class_embedding = _embedding(1, width, width=width)
        self.positional_embedding = _embedding(grid * grid + 1, width, width=width)
        self.mask_token = _embedding(1, 1, width, width=width)
        self.latent_token_positional_embedding = _embedding(num_latent_tokens, width, width=width)
        if text_tokens:
            self.text_guidance_proj = nn.Linear(text_dim, width)
            self.text_guidance_positional_embedding = _embedding(text_tokens, width, width=width)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(depth))
        self.ln_post = nn.LayerNorm(width)
        if head == "proxy":
            self.ffn = nn.Sequential(
                nn.Conv2d(width, 2 * width, 1), nn.Tanh(), nn.Conv2d(2 * width, proxy_codebook_size, 1)
            )
            self.conv_out = nn.Identity()
        elif head == "pixel":
            self.ffn = nn.Sequential(nn.Conv2d(width, patch_size * patch_size * 3, 1))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1)
        else:
            raise ValueError(f"unknown decoder head {head!r}: expected 'proxy' or 'pixel'")

    @property
    def has_text(self) -> bool:
        return hasattr(self, "text_guidance_proj")

    def forward(self, z: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """z: quantised tokens [B, C, 1, K]; text: [B, T, text_dim] for TA-TiTok."""
        b, c, _, k = z.shape
        x = self.decoder_embed(z.reshape(b, c, k).transpose(1, 2))
        x = x + self.latent_token_positional_embedding.to(x.dtype)
        masks = self.mask_token.to(x.dtype).expand(b, self.grid * self.grid, -1)
        cls = self.class_embedding.to(x.dtype).expand(b, -1, -1)
        masks = torch.cat([cls, masks], dim=1) + self.positional_embedding.to(x.dtype)
        parts = [masks, x]
        if self.has_text:
            if text is None:
                raise ValueError("this is a TA-TiTok decoder: pass the text tokens (text=[B, 77, 768])")
            parts.append(
                self.text_guidance_proj(text.to(x.dtype)) + self.text_guidance_positional_embedding.to(x.dtype)
            )
        elif text is not None:
            raise ValueError("this decoder is not text-aware; text tokens were given")
        x = self.ln_pre(torch.cat(parts, dim=1))
        for block in self.transformer:
            x = block(x)
        x = self.ln_post(x[:, 1 : 1 + self.grid * self.grid])
        x = x.transpose(1, 2).reshape(b, -1, self.grid, self.grid)
        x = self.ffn(x)
        if self.head == "pixel":
            # depth-to-space with channel order (p1, p2, c)
            p = self.patch_size
            x = x.reshape(b, p, p, 3, self.grid, self.grid).permute(0, 3, 4, 1, 5, 2)
            x = x.reshape(b, 3, self.grid * p, self.grid * p)
        return self.conv_out(x)


def init_weights(module: nn.Module, gain: float | None = None) -> None:
    """Reference init of TiTok and the generators: trunc-normal(0.02) for Linear/Conv/Embedding weights, zero
    biases, unit LayerNorm. TiTok's fused attention projection keeps its Xavier init (it is not a Linear in the
    reference either); its CLS, positional, latent and mask embeddings keep their width**-0.5 * randn init.

    gain: instead trunc-normal(gain / sqrt(fan_in)) for every weight matrix, the fused attention projection
    included: 0.02 is sized for widths 512-1024 and is too small at toy widths (docs/measurements.md)."""

    def normal(weight: torch.Tensor) -> None:
        std = 0.02 if gain is None else gain / weight[0].numel() ** 0.5
        nn.init.trunc_normal_(weight, std=std)

    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)):
            normal(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, SelfAttention) and gain is not None:
            normal(m.in_proj_weight)
