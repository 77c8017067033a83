"""MaskGIT generators over TiTok tokens: MaskGIT-ViT (the BERT layout of the released L-32/B-64
generators, plain torch) and MaskGIT-UViT (U-ViT with long skips, the released S-128 generator).

Token space: ids [0, V) are image codes, V is the mask token, V+1..V+C the class tokens, V+C+1 the
"null" class used for classifier-free guidance. The class token is prepended at position 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .sampling import SamplerSettings, sample_tokens
from .vit import init_weights


@dataclass(frozen=True)
class GeneratorConfig:
    arch: str = "vit"  # "vit" (BERT layout) or "uvit"
    hidden_size: int = 768
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 3072
    dropout: float = 0.1
    attn_dropout: float = 0.1
    codebook_size: int = 4096
    num_tokens: int = 32  # K, the tokenizer's latent length
    num_classes: int = 1000
    class_label_dropout: float = 0.1
    sampler: SamplerSettings = field(default_factory=SamplerSettings)

    def __post_init__(self):
        if self.arch not in ("vit", "uvit"):
            raise ValueError(f"unknown generator arch {self.arch!r}: expected 'vit' or 'uvit'")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + 1 + self.num_classes + 1


# ---- BERT layout (post-norm) --------------------------------------------------------------------------
class BertLayer(nn.Module):
    def __init__(self, c: GeneratorConfig):
        super().__init__()
        self.heads, self.attn_dropout = c.num_heads, c.attn_dropout
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size)
        self.attn_out = nn.Linear(c.hidden_size, c.hidden_size)
        self.attn_norm = nn.LayerNorm(c.hidden_size, eps=1e-12)
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)
        self.out_norm = nn.LayerNorm(c.hidden_size, eps=1e-12)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        x = self.attn_norm(x + self.drop(self.attn_out(a.transpose(1, 2).reshape(b, n, h))))
        return self.out_norm(x + self.drop(self.fc2(F.gelu(self.fc1(x)))))


class BertEmbeddings(nn.Module):
    def __init__(self, c: GeneratorConfig):
        super().__init__()
        self.word = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position = nn.Embedding(c.num_tokens + 1, c.hidden_size)
        self.token_type = nn.Embedding(2, c.hidden_size)  # only type 0 is used; kept for weight parity
        self.norm = nn.LayerNorm(c.hidden_size, eps=1e-12)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.word(ids) + self.position.weight[: ids.shape[1]] + self.token_type.weight[0]
        return self.drop(self.norm(x))


# ---- U-ViT layout (pre-norm, long skips) ---------------------------------------------------------------
class UViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class UViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class UViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, skip: bool = False):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = UViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = UViTMlp(dim, hidden)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# ---- the generator ---------------------------------------------------------------------------------------
class MaskGITGenerator(nn.Module):
    """Class-conditional masked-token transformer. `forward(ids, labels)` -> logits [B, K, codebook]."""

    kind = "generator"

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = c = config
        if c.arch == "vit":
            self.embeddings = BertEmbeddings(c)
            self.layers = nn.ModuleList(BertLayer(c) for _ in range(c.num_layers))
        else:
            half = c.num_layers // 2
            self.embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
            self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens + 1, c.hidden_size))
            self.in_blocks = nn.ModuleList(
                UViTBlock(c.hidden_size, c.num_heads, c.intermediate_size) for _ in range(half)
            )
            self.mid_block = UViTBlock(c.hidden_size, c.num_heads, c.intermediate_size)
            self.out_blocks = nn.ModuleList(
                UViTBlock(c.hidden_size, c.num_heads, c.intermediate_size, skip=True) for _ in range(half)
            )
            self.norm = nn.LayerNorm(c.hidden_size)
        self.lm_head = nn.Linear(c.hidden_size, c.codebook_size)
        self._init_weights()

    def _init_weights(self):
        init_weights(self)
        if self.config.arch == "uvit":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @property
    def mask_token_id(self) -> int:
        return self.config.codebook_size

    @property
    def null_class_id(self) -> int:
        return self.config.codebook_size + 1 + self.config.num_classes

    def class_tokens(self, labels: torch.Tensor, drop: torch.Tensor | bool = False) -> torch.Tensor:
        """Class labels [B] -> class token ids; `drop` (bool or [B] mask) replaces them by the null class."""
        tokens = labels.long() + self.config.codebook_size + 1
        if isinstance(drop, bool):
            return torch.full_like(tokens, self.null_class_id) if drop else tokens
        return torch.where(drop, torch.full_like(tokens, self.null_class_id), tokens)

    def backbone(self, seq: torch.Tensor) -> torch.Tensor:
        if self.config.arch == "vit":
            x = self.embeddings(seq)
            for layer in self.layers:
                x = layer(x)
            return x
        x = self.embeddings(seq) + self.pos_embed[:, : seq.shape[1]]
        skips = []
        for block in self.in_blocks:
            x = block(x)
            skips.append(x)
        x = self.mid_block(x)
        for block in self.out_blocks:
            x = block(x, skips.pop())
        return self.norm(x)

    def forward(
        self, ids: torch.Tensor, labels: torch.Tensor, drop_labels: torch.Tensor | bool = False
    ) -> torch.Tensor:
        seq = torch.cat([self.class_tokens(labels, drop_labels).unsqueeze(1), ids], dim=1)
        return self.lm_head(self.backbone(seq)[:, 1:])

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        batch_guidance: bool = False,
        forward: Callable[..., torch.Tensor] | None = None,
        **sampler_settings,
    ) -> torch.Tensor:
        """Sample token ids [B, K] for class labels [B]. Sampler settings default to this variant's
        released ones (`config.sampler`); any of them can be overridden by keyword. `generator`: one
        torch.Generator for the batch, or one per row (a sample's noise then does not depend on its batch).
        `batch_guidance` runs the conditional and unconditional passes as one batched forward.
        `forward` replaces `self.forward` (same signature), e.g. a compiled, CUDA-graphed or autocast wrapper."""
        settings = self.config.sampler.updated(**sampler_settings)
        forward = forward or self

        def logits_fn(ids, drop):
            return forward(ids, labels, drop)

        def batched_logits_fn(ids):
            both = forward(
                ids.repeat(2, 1), labels.repeat(2), torch.arange(2 * len(labels), device=ids.device) >= len(labels)
            )
            return both.chunk(2)

        return sample_tokens(
            logits_fn,
            len(labels),
            self.config.num_tokens,
            self.mask_token_id,
            settings,
            device=labels.device,
            generator=generator,
            batched_logits_fn=batched_logits_fn if batch_guidance else None,
        )
