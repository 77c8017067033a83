"""The throughput benchmark: generation (de-tokenisation included), tokenizer encode/decode, training steps, an
analytic FLOP count beside every measurement, and the cost of each against K.

    python -m bench.speed                                  # the default set (below) on the default device
    python -m bench.speed --toy                            # the same at toy sizes: a CPU smoke run
    python -m bench.speed --sections generation --pairs TiTok-L-32 --batch-size 8 --modes naive,parity,fast
    python -m bench.speed --tokenizer TiTok-S-32 --generator MaskGIT-ViT --gen-set num_layers=12 \\
        --sampler-set num_steps=16                         # any grid cell, with overrides
    python -m bench.speed --tokenizer TiTok-B-96 --toy --tok-set decoder_size=toy-L --modes parity,fast
    python -m bench.speed --scaling --toy --csv scaling.csv    # encode+decode and generation cost vs K, S/B/L
    python -m bench.speed --scaling --flops-only           # the analytic cost vs K at full sizes, no runs
    python -m bench.speed --sections training --train-pairs TiTok-S-128 --train-batch-size 2 --json out.json

Default set: the released tokenizer + generator pairs with their paper sampler settings (TiTok-L-32 +
MaskGIT-ViT:TiTok-L-32, 8 steps; TiTok-B-64 + MaskGIT-ViT:TiTok-B-64, 8 steps; TiTok-S-128 +
MaskGIT-UViT:TiTok-S-128, 64 steps) in the modes naive, parity and auto (bench/speed/options.py says what each
one is; `auto`, the default everywhere, is the fastest path that passes the quality guard: its `ran` column and
note say which); encode and decode of the three tokenizers; a training step of stage 1, stage 2 and the generator
(each stage's own objective in the training loop's own step: bench/speed/training.py); the measured matmul peak of
the device in fp32 and bf16 as the reference line. Weights are random (models.build): the timings are those of the
released weights, the images are not.

Every measurement runs `--warmup` untimed and `--repeats` timed times and reports the median, the inter-quartile
range and min/max. The FLOP count (bench/speed/flops.py) is per item (sample or image). The quality guard compares
each fast mode's tokens and images with the parity mode's (same seed): token agreement and image PSNR.

Python API: `measure_generation`, `measure_tokenizer` (bench.speed.measure), `measure_training`
(bench.speed.training), `scaling` (bench.speed.scaling), and `compare_with_parity` (bench.speed.paths) for the
quality guard.
"""

from __future__ import annotations

import argparse

import torch

from .options import MODES, resolve_options
from .run import run
from .scaling import SCALING_SIZES, SCALING_TOKENS
from .table import format_table, write_csv, write_json
from .training import TRAIN_STAGES, pretokenized_speedups

RELEASED_PAIRS = ("TiTok-L-32", "TiTok-B-64", "TiTok-S-128")
MODE_NOTES = {
    "naive": "the reference procedure written plainly: separate cond/uncond forwards per step, torch.no_grad, "
    "fp32, NCHW, eager (same model code: SDPA, fused QKV)",
    "parity": "exact fp32: batched cond/uncond forward, inference_mode; tokens equal the reference sampler's",
    "fast": "parity + bf16 (autocast and bf16 weight copies) + channels-last pixel decoder (+ CUDA graphs and "
    "TF32 on CUDA); parity's fp32 path on a CPU whose bf16 matmuls run below half the fp32 rate",
    "auto": "the fastest path that passes the quality guard: fast where bf16 matmuls are fast and fast's probe "
    "batch against parity clears tokens >= 90%, images and decode >= 30 dB PSNR, encode ids >= 85% "
    "(bench.speed.guard.QualityGuard), else parity; the row's path column and note say which ran and why",
    "compiled": "fast + torch.compile with freezing (compilation happens in the warm-up, outside the timings)",
}


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.speed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--toy", action="store_true", help="toy model sizes (64 px, toy-S/B/L, small VQGAN and generator)")
    p.add_argument(
        "--sections",
        type=_csv_list,
        default=["peak", "generation", "tokenizer", "training"],
        help="comma list of peak, generation, tokenizer, training",
    )
    p.add_argument(
        "--pairs",
        type=_csv_list,
        default=list(RELEASED_PAIRS),
        help="tokenizer names; each with its released generator and sampler settings",
    )
    p.add_argument("--tokenizer", help="a custom pair's tokenizer (any name of the registry, e.g. TiTok-S-32)")
    p.add_argument("--generator", default="MaskGIT-ViT", help="the custom pair's generator (default MaskGIT-ViT)")
    p.add_argument("--tok-set", action="append", metavar="KEY=VALUE", help="tokenizer config override (repeatable)")
    p.add_argument("--gen-set", action="append", metavar="KEY=VALUE", help="generator config override (repeatable)")
    p.add_argument(
        "--sampler-set",
        action="append",
        metavar="KEY=VALUE",
        help="sampler setting override, e.g. num_steps=16 (repeatable)",
    )
    p.add_argument(
        "--modes",
        type=_csv_list,
        default=["naive", "parity", "auto"],
        help=f"of {', '.join(MODES)} (default naive,parity,auto)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--train-pairs",
        type=_csv_list,
        default=None,
        help="tokenizers for the training steps (default: those of --pairs / --tokenizer)",
    )
    p.add_argument("--train-stages", type=_csv_list, default=list(TRAIN_STAGES))
    p.add_argument("--train-batch-size", type=int, default=8)
    p.add_argument("--train-precision", type=_csv_list, default=["fp32"], help="comma list of fp32, bf16, fp16")
    p.add_argument("--scaling", action="store_true", help="cost vs K for S/B/L instead of the default set")
    p.add_argument("--sizes", type=_csv_list, default=list(SCALING_SIZES))
    p.add_argument("--ks", type=lambda s: [int(k) for k in _csv_list(s)], default=list(SCALING_TOKENS))
    p.add_argument("--scaling-mode", default="auto", help="inference mode of the scaling runs (default auto)")
    p.add_argument("--no-scaling-generation", action="store_true", help="scaling: encode+decode only")
    p.add_argument("--flops-only", action="store_true", help="scaling: the analytic FLOP counts only (no runs)")
    p.add_argument("--csv", help="write the rows as CSV")
    p.add_argument("--json", help="write the environment and the rows as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = set(args.modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}; expected some of {', '.join(MODES)}")
    for mode in args.modes:
        resolve_options(mode, args.device)
    header, rows = run(args)
    print(
        f"# bench.speed  device: {header['device']}  torch {header['torch']}  threads {header['threads']}  "
        f"weights: {header['weights']} (timings only; images are not meaningful)"
    )
    for key, value in header.items():
        if key.startswith("matmul_peak"):
            print(f"# {key.replace('_', ' ')}: {value:.0f}")
    print(format_table(rows))
    print()
    for mode in dict.fromkeys(r.get("mode") for r in rows):
        if mode in MODE_NOTES:
            print(f"# {mode}: {MODE_NOTES[mode]}")
    notes = dict.fromkeys(
        (r["section"] if r["section"] == "training" else r.get("mode"), r["note"]) for r in rows if r.get("note")
    )
    for label, row_note in notes:  # inference rows: the path that ran where it is not what the mode's name says
        print(f"# {label}: {row_note}")
    for line in pretokenized_speedups(rows):
        print(line)
    print(
        "# FLOPs: analytic (bench/speed/flops.py), matmuls and convolutions only; % peak against the measured matmul "
        "peak of the row's precision"
    )
    if args.csv:
        write_csv(rows, args.csv)
    if args.json:
        write_json(rows, header, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
