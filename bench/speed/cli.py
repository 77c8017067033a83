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
MaskGIT-UViT:TiTok-S-128, 64 steps) in the modes naive, parity and auto (bench/speed/paths.py says what each
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
import ast
import csv
import gc
import json
import sys

import torch

import models
from models.maskgit_vqgan import VQGANConfig

from .factories import build_generator, build_tokenizer, generator_config, teacher_for, tokenizer_config
from .measure import Runner, generation_runner, tokenizer_runners
from .paths import MODES, image_psnr, resolve_options
from .scaling import SCALING_SIZES, SCALING_TOKENS, scaling, scaling_flops
from .timing import environment, matmul_peak, time_interleaved
from .training import TRAIN_STAGES, measure_training, pretokenized_speedups

RELEASED_PAIRS = ("TiTok-L-32", "TiTok-B-64", "TiTok-S-128")
MODE_NOTES = {
    "naive": "the reference procedure written plainly: separate cond/uncond forwards per step, torch.no_grad, "
    "fp32, NCHW, eager (same model code: SDPA, fused QKV)",
    "parity": "exact fp32: batched cond/uncond forward, inference_mode; tokens equal the reference sampler's",
    "fast": "parity + bf16 (autocast and bf16 weight copies) + channels-last pixel decoder (+ CUDA graphs and "
    "TF32 on CUDA); parity's fp32 path on a CPU whose bf16 matmuls run below half the fp32 rate",
    "auto": "the fastest path that passes the quality guard: fast where bf16 matmuls are fast and fast's probe "
    "batch against parity clears tokens >= 90%, images and decode >= 30 dB PSNR, encode ids >= 85% "
    "(bench.speed.paths.QualityGuard), else parity; the row's path column and note say which ran and why",
    "compiled": "fast + torch.compile with freezing (compilation happens in the warm-up, outside the timings)",
}


def parse_overrides(items: list[str] | None) -> dict:
    """["key=value", ...] -> dict; values are Python literals where they parse (else strings); a dict given for
    `vqgan` becomes a VQGANConfig."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if key == "vqgan" and isinstance(value, dict):
            value = VQGANConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        out[key.strip()] = value
    return out


# ---- output --------------------------------------------------------------------------------------------------------
COLUMNS = (
    ("section", "section", "{}"),
    ("task", "task", "{}"),
    ("model", "model", "{}"),
    ("mode", "mode", "{}"),
    ("path", "ran", "{}"),
    ("batch", "B", "{}"),
    ("throughput", "items/s", "{:.3g}"),
    ("unit", "unit", "{}"),
    ("median_s", "median s", "{:.3g}"),
    ("iqr_s", "IQR s", "{:.2g}"),
    ("min_s", "min s", "{:.3g}"),
    ("max_s", "max s", "{:.3g}"),
    ("gflop_per_item", "GFLOP/item", "{:.4g}"),
    ("achieved_gflops", "GFLOP/s", "{:.4g}"),
    ("peak_pct", "% peak", "{:.0f}"),
    ("flops_x", "FLOPs x K0", "{:.2f}"),
    ("time_x", "time x K0", "{:.2f}"),
    ("speedup", "x parity", "{:.2f}"),
    ("quality", "quality vs parity", "{}"),
)


def format_table(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(c[0] in r and r[c[0]] is not None for r in rows)]
    cells = [[c[1] for c in cols]]
    for r in rows:
        cells.append([c[2].format(r[c[0]]) if r.get(c[0]) is not None else "" for c in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _plain(rows: list[dict]) -> list[dict]:
    """Rows without tensors (for CSV/JSON)."""
    return [{k: v for k, v in r.items() if not isinstance(v, torch.Tensor)} for r in rows]


def write_csv(rows: list[dict], path: str) -> None:
    rows = _plain(rows)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_json(rows: list[dict], header: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump({"environment": header, "rows": _plain(rows)}, f, indent=1, default=str)


# ---- the CLI -------------------------------------------------------------------------------------------------------
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


def _pairs(args) -> list[tuple[str, str, dict, dict]]:
    """(tokenizer, generator, tokenizer overrides, generator overrides) to measure."""
    tok_set, gen_set = parse_overrides(args.tok_set), parse_overrides(args.gen_set)
    if args.tokenizer:
        return [(args.tokenizer, args.generator, tok_set, gen_set)]
    out = []
    for name in args.pairs:
        variant = models.resolve(name)
        if variant.generator is None:
            raise SystemExit(f"{name} has no released generator; use --tokenizer {name} --generator MaskGIT-ViT")
        out.append((name, variant.generator, tok_set, gen_set))
    return out


def _annotate(rows: list[dict], peaks: dict[str, float]) -> None:
    """Speed-up over the parity row of the same task and model, and the share of the matmul peak."""
    parity = {(r["task"], r.get("model")): r["median_s"] for r in rows if r.get("mode") == "parity"}
    compared = {(r["task"], r.get("model")) for r in rows if r.get("mode") in MODES and r.get("mode") != "parity"}
    for r in rows:
        key = (r["task"], r.get("model"))
        if key in parity and key in compared and r.get("mode") in MODES:
            r["speedup"] = parity[key] / r["median_s"]
        peak = peaks.get(r.get("precision", "fp32"))
        if peak and r.get("achieved_gflops") is not None:
            r["peak_pct"] = 100 * r["achieved_gflops"] * 1e9 / peak


def _quality(row: dict, ref: dict) -> str:
    if "ids" in row:
        agree = float((row["ids"] == ref["ids"]).float().mean())
        return f"tokens {100 * agree:.1f}%, PSNR {image_psnr(row['images'], ref['images']):.1f} dB"
    out, ref_out = row["output"], ref["output"]
    if row["task"] == "decode":
        return f"PSNR {image_psnr(out, ref_out):.1f} dB"
    if out.dtype == torch.long:
        return f"ids {100 * float((out == ref_out).float().mean()):.1f}%"
    return f"rel. err {float((out - ref_out).norm() / ref_out.norm()):.2g}"


def run(args) -> tuple[dict, list[dict]]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    header = environment(device)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(
            "  "
            + "  ".join(
                f"{k}={_short(v)}"
                for k, v in row.items()
                if k in ("section", "task", "model", "mode", "batch", "throughput", "median_s")
            ),
            file=sys.stderr,
            flush=True,
        )

    peaks: dict[str, float] = {}
    if not args.flops_only and ("peak" in args.sections or args.scaling):
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
        if device.type == "cuda":
            dtypes["fp16"] = torch.float16
        for name, dtype in dtypes.items():
            peaks[name] = matmul_peak(dtype, device)
            header[f"matmul_peak_{name}_gflops"] = peaks[name] / 1e9

    if args.scaling and args.flops_only:
        return header, scaling_flops(sizes=args.sizes, ks=args.ks, toy=args.toy)
    if args.scaling:
        rows = scaling(
            sizes=args.sizes,
            ks=args.ks,
            toy=args.toy,
            batch_size=args.batch_size,
            mode=args.scaling_mode,
            warmup=args.warmup,
            repeats=args.repeats,
            device=device,
            generation=not args.no_scaling_generation,
            log=lambda r: print(f"  {r['model']} {r['task']}", file=sys.stderr, flush=True),
        )
        _annotate(rows, peaks)
        return header, rows

    sampler_set = parse_overrides(args.sampler_set)
    inference_pairs = _pairs(args) if {"generation", "tokenizer"} & set(args.sections) else []
    for tok_name, gen_name, tok_set, gen_set in inference_pairs:
        torch.manual_seed(args.seed)
        tok = build_tokenizer(tok_name, tok_set, toy=args.toy).to(device)
        teacher = teacher_for(tok)
        model = tok_name + (" (toy)" if args.toy else "")
        runners: dict[tuple[str, str], tuple[str, Runner]] = {}  # (mode, task) -> (section, runner)
        if "generation" in args.sections:
            gen = build_generator(gen_name, tok, gen_set, toy=args.toy).to(device)
            settings = gen.config.sampler.updated(**sampler_set)
            for mode in args.modes:
                runners[(mode, "generate")] = (
                    "generation",
                    generation_runner(
                        tok,
                        gen,
                        batch_size=args.batch_size,
                        sampler_settings=settings,
                        mode=mode,
                        teacher=teacher,
                        device=device,
                        seed=args.seed,
                    ),
                )
        if "tokenizer" in args.sections:
            for mode in args.modes:
                if mode == "naive":
                    continue  # naive differs from parity only in the generator's guidance passes
                for task, runner in tokenizer_runners(
                    tok, batch_size=args.batch_size, mode=mode, teacher=teacher, device=device, seed=args.seed
                ).items():
                    runners[(mode, task)] = ("tokenizer", runner)
        # the modes of a task are timed in turn, round by round, so that load changes hit them alike
        for task in dict.fromkeys(t for _, t in runners):
            group = {mode: runner for (mode, t), (_, runner) in runners.items() if t == task}
            timings = time_interleaved(
                group,
                warmup=args.warmup,
                repeats=args.repeats,
                device=device,
                log=lambda m, prefix=f"  {model} {task}": print(prefix, m, file=sys.stderr, flush=True),
            )
            results = {mode: group[mode].result(timings[mode], keep_outputs=True) for mode in group}
            for mode, row in results.items():
                if "parity" in results:
                    row["quality"] = "reference" if mode == "parity" else _quality(row, results["parity"])
                section = runners[(mode, task)][0]
                emit({"section": section, "model": model + (f" + {gen_name}" if task == "generate" else ""), **row})
        del tok, teacher, runners
        gc.collect()

    if "training" in args.sections:
        train_pairs = args.train_pairs or [p[0] for p in _pairs(args)]
        tok_set, gen_set = parse_overrides(args.tok_set), parse_overrides(args.gen_set)
        for tok_name in train_pairs:
            tok_cfg = tokenizer_config(tok_name, tok_set, args.toy)
            gen_name = args.generator if args.tokenizer else (models.resolve(tok_name).generator or "MaskGIT-ViT")
            gen_cfg = generator_config(gen_name, tok_cfg, gen_set, args.toy) if tok_cfg.quantizer == "vq" else None
            for stage in args.train_stages:
                if (stage == "stage1" and not tok_cfg.two_stage) or (stage.startswith("generator") and gen_cfg is None):
                    continue
                for precision in args.train_precision:
                    row = measure_training(
                        stage,
                        tok_cfg,
                        gen_cfg,
                        batch_size=args.train_batch_size,
                        precision=precision,
                        warmup=args.warmup,
                        repeats=args.repeats,
                        device=device,
                        seed=args.seed,
                    )
                    model = tok_name + (" (toy)" if args.toy else "")
                    model += f" + {gen_name}" if stage.startswith("generator") else ""
                    emit({"section": "training", "model": model, **row})
                    gc.collect()
    _annotate(rows, peaks)
    return header, rows


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


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
