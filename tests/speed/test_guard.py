"""`auto`'s guarded choice (bench.speed.paths.choose_path with bench.speed.guard's bounds): fast only where bf16 is
fast and fast passes the guard, else parity, and the reason recorded; the guard's failures in words."""

import pytest

from bench.speed.guard import EXACT_GUARD, QualityGuard
from bench.speed.options import InferenceOptions, mode_options
from bench.speed.paths import InferencePipeline
from bench.stages.speed import speed_path
from tests.speed.toys import BF16, bf16_rate, toy_pair


@pytest.mark.parametrize("rate, expected", [(1.0, "parity"), (150.0, "fast")])
def test_auto_mode_takes_fast_only_where_bf16_matmuls_are_fast(monkeypatch, rate, expected):
    """`auto` is `fast` on a CPU with bf16 units (and on CUDA), `parity` on one without (bf16 at ~1% of fp32)."""
    bf16_rate(monkeypatch, rate)
    assert mode_options("auto", "cpu") == mode_options(expected, "cpu")
    assert mode_options("auto", "cuda") == mode_options("fast", "cuda")
    tok, gen = toy_pair()
    pipe = InferencePipeline(tok, gen, options="auto")
    assert pipe.choice.mode == expected and pipe.options == (BF16 if expected == "fast" else InferenceOptions())
    if expected == "fast":  # it passed the guard on its probe batch, and says so with the numbers
        assert "passed the quality guard" in pipe.choice.reason and pipe.choice.quality["token_agreement"] >= 0.9
    else:  # no probe: fast is parity's path here
        assert "0.01x the fp32 rate" in pipe.choice.reason and not pipe.choice.quality


def test_auto_falls_back_to_parity_when_fast_fails_the_guard(monkeypatch):
    bf16_rate(monkeypatch, 150.0)
    tok, gen = toy_pair()
    strict = QualityGuard(min_decode_psnr_db=1000.0, batch_size=2)
    pipe = InferencePipeline(
        tok, gen, options="auto", guard=strict, probe_settings=gen.config.sampler.updated(num_steps=2)
    )
    assert pipe.choice.mode == "parity" and pipe.options.exact
    assert "failed the quality guard: decode_psnr_db" in pipe.choice.reason and "needs >= 1000" in pipe.choice.reason
    # the exact guard (evaluation sampling) admits exact paths only, without a probe
    exact = InferencePipeline(tok, gen, options="auto", guard=EXACT_GUARD)
    assert exact.choice.mode == "parity" and "exact fp32 paths only" in exact.choice.reason
    assert exact.describe() == "parity (fp32+batch_guidance+inference_mode)"
    # the speed stage's tag: asked-for mode, the path that ran, why
    row = {"path": pipe.choice.mode, "options": pipe.options.describe(), "note": pipe.choice.reason}
    assert speed_path("auto", row).startswith("auto -> parity (fp32+batch_guidance+inference_mode): fast failed")


def test_guard_failures_name_each_check():
    assert QualityGuard().failures({"token_agreement": 1.0, "image_psnr_db": 40.0, "encode_agreement": 0.95}) == []
    failed = QualityGuard().failures({"token_agreement": 0.5, "encode_rel_error": 0.1, "decode_psnr_db": 31.0})
    assert failed == ["token_agreement 0.5 (needs >= 0.9)", "encode_rel_error 0.1 (needs <= 0.02)"]
    tok, gen = toy_pair()
    with pytest.raises(ValueError, match="CUDA"):
        InferencePipeline(tok, gen, options=InferenceOptions(cuda_graphs=True))
