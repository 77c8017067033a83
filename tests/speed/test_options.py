"""bench.speed.options: the named modes, and `fast` running parity's fp32 path where bf16 matmuls are slow."""

import pytest

from bench.speed import measure
from bench.speed.options import InferenceOptions, fallback_note, mode_options
from tests.speed.toys import BF16, bf16_rate, toy_pair


def test_modes(monkeypatch):
    bf16_rate(monkeypatch, 150.0)
    assert mode_options("parity").exact and mode_options("naive").exact
    assert not mode_options("naive").batch_guidance and not mode_options("naive").inference_mode
    fast_cpu, fast_gpu = mode_options("fast", "cpu"), mode_options("fast", "cuda")
    assert fast_cpu.precision == "bf16" and not fast_cpu.cuda_graphs and fast_gpu.cuda_graphs
    assert mode_options("compiled").compile
    with pytest.raises(ValueError, match="unknown inference mode"):
        mode_options("turbo")
    with pytest.raises(ValueError, match="precision"):
        InferenceOptions(precision="int8")


def test_fast_is_never_slower_than_parity_where_bf16_is_slow(monkeypatch):
    """On a CPU whose bf16 matmuls are slow, `fast` runs parity's own fp32 path (so it cannot be slower), and the
    row says so; where bf16 is fast it keeps bf16."""
    bf16_rate(monkeypatch, 1.3)
    assert mode_options("fast", "cpu") == InferenceOptions() and mode_options("compiled", "cpu").exact
    assert "fast runs parity's fp32 path" in fallback_note("fast", "cpu")
    tok, gen = toy_pair()
    row = measure.measure_generation(
        tok, gen, batch_size=1, sampler_settings={"num_steps": 2}, mode="fast", warmup=0, repeats=1
    )
    assert row["path"] == "fast" and row["precision"] == "fp32" and "parity's fp32 path" in row["note"]
    assert mode_options("fast", "cuda").precision == "bf16"  # CUDA runs bf16 on tensor cores
    bf16_rate(monkeypatch, 150.0)
    assert mode_options("fast", "cpu") == BF16 and fallback_note("fast", "cpu") is None
