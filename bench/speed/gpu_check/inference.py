"""The GPU check's inference rows: the bf16 matmul peak, every inference path and the sampling loop's CUDA graphs and
torch.compile against exact fp32 parity (within a quality guard), and the generation benchmark."""

from __future__ import annotations

import functools
import math
import sys
import time

import torch

from ..guard import GUARD, QualityGuard, image_psnr
from ..measure import generation_runner
from ..options import InferenceOptions
from ..paths import InferencePipeline, compare_with_parity
from ..timing import matmul_peak, time_interleaved
from .config import GENERATOR, TOKENIZER, Config, model_pair, release, sampler_settings
from .table import FAIL, INFO, OK, SKIP, Row

PEAK_TARGET = 0.5  # the target share of the bf16 matmul peak for generation at batch 256 on an H100/H200
IDENTICAL = QualityGuard(
    min_token_agreement=1.0,
    min_image_psnr_db=math.inf,
    min_decode_psnr_db=math.inf,
    min_encode_agreement=1.0,
    max_encode_rel_error=0.0,
)
# naive differs from parity in the batch shapes of the guidance passes only: on CUDA, cuBLAS may pick other kernels
# for them (another summation order), which can flip a near-tie of random weights' logits
NEAR_EXACT = QualityGuard(
    min_token_agreement=0.98,
    min_image_psnr_db=40.0,
    min_decode_psnr_db=math.inf,
    min_encode_agreement=1.0,
    max_encode_rel_error=0.0,
)


def _quality_text(q: dict[str, float]) -> str:
    parts = {
        "token_agreement": "tokens {:.1%}",
        "image_psnr_db": "PSNR {:.1f} dB",
        "decode_psnr_db": "decode {:.1f} dB",
        "encode_agreement": "encode {:.1%}",
        "encode_rel_error": "encode err {:.2g}",
    }
    return ", ".join(parts[k].format(v) for k, v in q.items() if k in parts)


def _bound_text(guard: QualityGuard) -> str:
    if guard == IDENTICAL:
        return "identical to parity"
    return (
        f"tokens >= {guard.min_token_agreement:.0%}, PSNR >= {guard.min_image_psnr_db:g} dB, decode >= "
        f"{guard.min_decode_psnr_db:g} dB, encode >= {guard.min_encode_agreement:.0%}"
    )


def quality_row(
    check: str,
    subject: str,
    setting: str,
    quality: dict[str, float],
    guard: QualityGuard,
    seconds: float | None = None,
    note: str = "",
) -> Row:
    """A row of a path's agreement with parity, FAIL when it misses `guard`'s bounds (QualityGuard.failures)."""
    failed = guard.failures(quality)
    result = _quality_text(quality) + (f"; {note}" if note else "")
    return Row(
        check,
        subject,
        setting,
        result + ("; fails " + "; ".join(failed) if failed else ""),
        _bound_text(guard),
        FAIL if failed else OK,
        seconds,
        dict(quality),
    )


def _parity_comparison(cfg: Config, tok, gen, teacher, settings):
    """compare_with_parity(options=...) of the pair at the path checks' batch and seed: a path's samples against
    parity's."""
    return functools.partial(
        compare_with_parity,
        tok,
        gen,
        batch_size=cfg.path_batch,
        seed=cfg.seed,
        sampler_settings=settings,
        teacher=teacher,
    )


def check_peak(cfg: Config, state: dict) -> list[Row]:
    t0 = time.perf_counter()
    peak = matmul_peak(torch.bfloat16, cfg.device, budget_s=cfg.peak_budget_s)
    state["bf16_peak"] = peak
    return [
        Row(
            "peak",
            "bf16 matmul",
            "square, up to 8192" if cfg.device.type == "cuda" else "square, up to 2048",
            f"{peak / 1e12:.4g} TFLOP/s",
            "",
            INFO,
            time.perf_counter() - t0,
            {"bf16_peak_flops": peak},
        )
    ]


def check_paths(cfg: Config, state: dict) -> list[Row]:
    """naive, parity, fast and auto against parity on TiTok-L-32 + its generator (compare_with_parity)."""
    tok, gen, teacher = model_pair(cfg, state)
    settings = sampler_settings(cfg, gen)
    compare = _parity_comparison(cfg, tok, gen, teacher, settings)
    subject = f"{TOKENIZER} + {GENERATOR}{cfg.model}"
    rows = []
    guards = {
        "naive": NEAR_EXACT if cfg.device.type == "cuda" else IDENTICAL,
        "parity": IDENTICAL,
        "fast": GUARD,
        "auto": GUARD,
    }
    for mode, guard in guards.items():
        t0 = time.perf_counter()
        # the path as the pipeline resolves it on this device (auto: its guarded choice, fast: bf16 or its fallback)
        pipe = InferencePipeline(tok, gen, options=mode, teacher=teacher, probe_settings=settings)
        q = compare(options=pipe.options)
        setting = f"{mode} -> {pipe.choice.describe()}" if mode == "auto" else f"{mode} ({pipe.options.describe()})"
        rows.append(
            quality_row(
                "path vs parity",
                subject,
                f"{setting}, B={cfg.path_batch}",
                q,
                IDENTICAL if pipe.options == InferenceOptions() else guard,
                time.perf_counter() - t0,
                pipe.choice.reason if mode != "auto" else "",
            )
        )
        del pipe
    release(cfg.device)
    return rows


def check_graphs(cfg: Config, state: dict) -> list[Row]:
    """The sampling loop from CUDA graphs (fp32: identical to eager parity) and torch.compile'd (`compiled` mode, with
    inductor's CUDA graphs on CUDA) within the quality guard."""
    tok, gen, teacher = model_pair(cfg, state)
    settings = sampler_settings(cfg, gen)
    compare = _parity_comparison(cfg, tok, gen, teacher, settings)
    subject = f"{TOKENIZER} + {GENERATOR}{cfg.model}"
    rows = []
    if cfg.device.type == "cuda":
        t0 = time.perf_counter()
        q = compare(options=InferenceOptions(cuda_graphs=True))
        rows.append(
            quality_row(
                "sampling loop",
                subject,
                f"CUDA graphs, fp32, B={cfg.path_batch}",
                q,
                IDENTICAL,
                time.perf_counter() - t0,
            )
        )
    else:
        rows.append(Row("sampling loop", subject, "CUDA graphs, fp32", "CUDA only", "", SKIP))
    t0 = time.perf_counter()
    pipe = InferencePipeline(tok, gen, options="compiled", teacher=teacher)
    q = compare(options=pipe.options)
    rows.append(
        quality_row(
            "sampling loop",
            subject,
            f"torch.compile ({pipe.options.describe()}), B={cfg.path_batch}",
            q,
            GUARD,
            time.perf_counter() - t0,
            "compile time included",
        )
    )
    del pipe
    release(cfg.device)
    return rows


def check_generation(cfg: Config, state: dict) -> list[Row]:
    """The generation benchmark at batch cfg.gen_batch (generation_runner: sampling with de-tokenisation), each mode
    timed interleaved with parity, samples/s, share of the bf16 peak, and tokens/PSNR against parity."""
    tok, gen, teacher = model_pair(cfg, state)
    settings = sampler_settings(cfg, gen)
    modes = ("parity", *[m for m in cfg.gen_modes if m != "parity"])
    runners = {
        mode: generation_runner(
            tok,
            gen,
            batch_size=cfg.gen_batch,
            sampler_settings=settings,
            mode=mode,
            teacher=teacher,
            device=cfg.device,
            seed=cfg.seed,
        )
        for mode in modes
    }
    t0 = time.perf_counter()
    timings = time_interleaved(
        runners,
        warmup=cfg.warmup,
        repeats=cfg.repeats,
        device=cfg.device,
        log=lambda m: print(f"  generation {m}", file=sys.stderr, flush=True),
    )
    seconds = time.perf_counter() - t0
    results = {mode: runners[mode].result(timings[mode], keep_outputs=True) for mode in modes}
    peak = state.get("bf16_peak")
    ref = results["parity"]
    rows = []
    for mode, r in results.items():
        low = r["precision"] != "fp32"
        # the share of the bf16 peak means something for the bf16 rows only (fp32 rows run another peak)
        share = r["achieved_gflops"] * 1e9 / peak if peak and low else None
        text = f"{r['throughput']:.4g} samples/s, {r['achieved_gflops'] / 1e3:.3g} TFLOP/s"
        if share is not None:
            text += f" = {share:.0%} of bf16 peak"
        if mode != "parity":
            agree = float((r["ids"] == ref["ids"]).float().mean())
            text += f"; tokens {agree:.1%}, PSNR {image_psnr(r['images'], ref['images']):.1f} dB vs parity"
        bound, status = "", INFO
        if share is not None and cfg.device.type == "cuda":  # the target is an H100/H200 one
            bound = f"target >= {PEAK_TARGET:.0%} of bf16 peak (H100/H200)"
            status = "met" if share >= PEAK_TARGET else "below"
        values = {k: v for k, v in r.items() if not isinstance(v, torch.Tensor)}
        rows.append(
            Row(
                "generation",
                f"{TOKENIZER} + {GENERATOR}{cfg.model}",
                f"{mode} ({r['options']}), B={cfg.gen_batch}, {r['steps']} steps",
                text,
                bound,
                status,
                r["median_s"],
                dict(values, peak_share=share),
            )
        )
    rows[0].seconds = seconds  # parity's row carries the whole timed benchmark (compilation in the warm-up)
    del runners, results, ref
    release(cfg.device)
    return rows
