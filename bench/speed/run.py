"""Running the throughput benchmark the command line asks for (bench/speed/cli.py): the matmul peaks, the generation
and tokenizer sections (each task's modes timed interleaved, each fast mode's quality against parity), the training
steps, or the scaling runs; then each row's speed-up over parity and share of the matmul peak."""

from __future__ import annotations

import ast
import gc
import sys

import torch

import models
from models.maskgit_vqgan import VQGANConfig

from .factories import build_generator, build_tokenizer, generator_config, teacher_for, tokenizer_config
from .guard import image_psnr
from .measure import Runner, generation_runner, tokenizer_runners
from .options import MODES
from .scaling import scaling, scaling_flops
from .timing import environment, matmul_peak, time_interleaved
from .training import measure_training


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
