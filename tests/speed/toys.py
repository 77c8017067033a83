"""The toy models and helpers the bench.speed tests share."""

import pytest
import torch

from bench.core import dist as D
from bench.speed import factories
from bench.speed.options import fast_options

# the bf16 switches themselves (fast_options), whether or not this CPU runs bf16 quickly: their numerics are tested
BF16 = fast_options("cpu")


def toy_pair(tokenizer="TiTok-L-32", generator="MaskGIT-ViT:TiTok-L-32", seed=0, **tok_set):
    torch.manual_seed(seed)
    tok = factories.build_tokenizer(tokenizer, tok_set, toy=True)
    return tok, factories.build_generator(generator, tok, toy=True)


def rng(seed=0):
    return torch.Generator().manual_seed(seed)


def bf16_rate(monkeypatch: pytest.MonkeyPatch, rate: float) -> None:
    """This CPU's bf16 matmul rate as `rate`% of fp32 (the probe of bench.core.dist)."""
    rates = {torch.float32: 100.0, torch.bfloat16: rate}
    monkeypatch.setattr(D, "_matmul_rate", lambda device_type, dtype: rates[dtype])
