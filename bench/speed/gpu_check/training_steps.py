"""The GPU check's training rows: one step of each stage's real objective in the training loop's Trainer at full
size, in the paper preset's precision and per-GPU batch (finite logs, every module updated, peak memory), and stage-1
training throughput."""

from __future__ import annotations

import math
import time

import torch

import models

from ..factories import generator_config, tokenizer_config
from ..training import TRAIN_STAGES, measure_training, paper_loop, training_step
from .config import GENERATOR, SINGLE_STAGE, TOKENIZER, Config, release
from .table import FAIL, INFO, OK, Row

FP16_TRIES = 8  # fp16 steps allowed before every module must have changed (GradScaler backs off from 2**16)


def training_cases(cfg: Config) -> list[tuple[str, str, models.TiTokConfig, models.GeneratorConfig | None, str]]:
    """(stage label, bench.speed.training stage, tokenizer config, generator config, the paper preset's section
    whose loop it runs: bench.speed.training.PRESET_SECTIONS) of every stage."""
    two = tokenizer_config(TOKENIZER, toy=cfg.toy)
    gen = generator_config(GENERATOR, two, toy=cfg.toy)
    cases = [
        ("stage1", "stage1", two, None, "stage1"),
        ("stage2", "stage2", two, None, "stage2"),
        ("single-stage", "stage2", tokenizer_config(SINGLE_STAGE, toy=cfg.toy), None, "single"),
        ("generator", "generator", two, gen, "generator"),
    ]
    if "generator_pretokenized" in TRAIN_STAGES:
        cases.append(("generator (pretokenized)", "generator_pretokenized", two, gen, "generator_pretokenized"))
    return cases


def _snapshot(trainer) -> dict[str, list[torch.Tensor]]:
    return {
        name: [p.detach().clone() for p in trainer.objective.modules[name].parameters() if p.requires_grad]
        for name in trainer.optimizers
    }


def check_one_training_step(
    cfg: Config,
    label: str,
    stage: str,
    tok_cfg: models.TiTokConfig,
    gen_cfg: models.GeneratorConfig | None,
    precision: str,
    batch: int | None = None,
) -> Row:
    """One step of `stage` in the loop's Trainer at `batch` (default cfg.train_batch): the precision that ran, finite
    logs, every optimizer's module changed (fp16: within FP16_TRIES steps, as the gradient scaler skips overflowing
    steps), and the peak memory it took (CUDA)."""
    t0 = time.perf_counter()
    batch = batch or cfg.train_batch
    if cfg.device.type == "cuda":
        release(cfg.device)
        torch.cuda.reset_peak_memory_stats(cfg.device)
    step = training_step(
        stage, tok_cfg, gen_cfg, batch_size=batch, precision=precision, device=cfg.device, seed=cfg.seed
    )
    trainer = step.trainer
    before = _snapshot(trainer)
    tries, logs = 0, {}
    changed: dict[str, bool] = {}
    while tries < (FP16_TRIES if trainer.precision == "fp16" else 1):
        logs = step()
        tries += 1
        changed = {
            name: any(not torch.equal(a, b) for a, b in zip(params, _params(trainer, name)))
            for name, params in before.items()
        }
        if all(changed.values()):
            break
    problems = []
    if trainer.precision != precision:
        if cfg.device.type == "cuda":
            problems.append(f"ran {trainer.precision}")
    nonfinite = sorted(k for k, v in logs.items() if not math.isfinite(v))
    if nonfinite:
        problems.append("non-finite " + ", ".join(nonfinite))
    unchanged = sorted(name for name, c in changed.items() if not c)
    if unchanged:
        problems.append(f"unchanged after {tries} step(s): {', '.join(unchanged)}")
    losses = {k: v for k, v in logs.items() if k.endswith("loss")}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in list(losses.items())[:2])
    ran = trainer.precision if trainer.precision == precision else f"{trainer.precision} (asked {precision})"
    result = f"{shown}; updated {'+'.join(n for n, c in changed.items() if c) or 'nothing'} in {tries} step(s)"
    peak = torch.cuda.max_memory_allocated(cfg.device) if cfg.device.type == "cuda" else None
    if peak is not None:
        result += f"; peak memory {peak / 2**30:.1f} GiB"
    if problems:
        result += "; " + "; ".join(problems)
    fallback = trainer.precision != precision  # a CPU whose autocast is slow runs fp32 (bench.core.dist)
    row = Row(
        "training step",
        f"{label}: {step.task} {_model_of(stage, tok_cfg)}{cfg.model}",
        f"{ran}, B={batch}",
        result,
        "finite, every module updated",
        FAIL if problems else OK,
        time.perf_counter() - t0,
        {
            "precision": trainer.precision,
            "asked": precision,
            "batch": batch,
            "tries": tries,
            "logs": logs,
            "cpu_fallback": fallback,
            "peak_memory_bytes": peak,
        },
    )
    del step, trainer, before
    release(cfg.device)
    return row


def _params(trainer, name: str) -> list[torch.Tensor]:
    return [p.detach() for p in trainer.objective.modules[name].parameters() if p.requires_grad]


def _model_of(stage: str, tok_cfg: models.TiTokConfig) -> str:
    if stage.startswith("generator"):
        return GENERATOR
    return SINGLE_STAGE if not tok_cfg.two_stage else TOKENIZER


def check_training(cfg: Config, state: dict) -> list[Row]:
    """Each stage in the paper preset's precision at its per-GPU batch (toy: cfg.train_batch)."""
    rows = []
    for label, stage, tok_cfg, gen_cfg, section in training_cases(cfg):
        paper = paper_loop(section)
        rows.append(
            check_one_training_step(
                cfg, label, stage, tok_cfg, gen_cfg, paper["precision"], cfg.train_batch or paper["micro_batch"]
            )
        )
    return rows


def check_train_speed(cfg: Config, state: dict) -> list[Row]:
    """Stage-1 TiTok-L-32 training throughput in the paper's stage-1 precision at its per-GPU batch (measure_training:
    the loop's own step)."""
    tok_cfg = tokenizer_config(TOKENIZER, toy=cfg.toy)
    paper = paper_loop("stage1")
    precision, batch = paper["precision"], cfg.speed_batch or paper["micro_batch"]
    r = measure_training(
        "stage1",
        tok_cfg,
        batch_size=batch,
        precision=precision,
        warmup=cfg.warmup,
        repeats=cfg.repeats,
        device=cfg.device,
        seed=cfg.seed,
    )
    peak = state.get("bf16_peak")
    text = f"{r['throughput']:.4g} images/s, {r['achieved_gflops'] / 1e3:.3g} TFLOP/s"
    if peak:
        text += f" = {r['achieved_gflops'] * 1e9 / peak:.0%} of bf16 peak"
    release(cfg.device)
    return [
        Row(
            "training speed",
            f"stage1: {r['task']} {TOKENIZER}{cfg.model}",
            f"{precision}, B={batch}",
            text,
            "",
            INFO,
            r["median_s"],
            {k: v for k, v in r.items() if k != "note"},
        )
    ]
