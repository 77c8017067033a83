"""The GPU check: CUDA correctness and speed of the harness on one GPU, in one table (within 8 minutes on one GPU).

    .venv/bin/nox -s gpu                                  # the session (ends "skipped" without a CUDA device)
    python -m bench.speed.gpu_check                       # the same; --json OUT writes the table's rows
    python -m bench.speed.gpu_check --device cpu --toy    # developer: every check at toy size on the CPU
    python -m bench.speed.gpu_check --checks paths,nccl   # some checks only (names below)

Checks, in order (each one function of this module, returning rows; a check that raises is a FAIL row and the others
still run):
- peak: the measured bf16 matmul peak (bench.speed.timing.matmul_peak, square matmuls up to 8192 on CUDA), the
  reference of the "% peak" column;
- paths: every inference path of bench.speed.paths (naive, parity, fast, auto) against the exact fp32 parity path on
  a fixed seed (compare_with_parity: sampled-token agreement, image PSNR, decode PSNR of the same tokens, encode
  agreement), TiTok-L-32 + MaskGIT-ViT:TiTok-L-32 at full size; naive within NEAR_EXACT, parity identical to itself
  (determinism), fast and auto within the quality guard (bench.speed.paths.GUARD);
- graphs: the sampling loop's generator forward replayed from CUDA graphs in fp32, which must be identical to eager
  parity (fast uses the same graphs in bf16), and torch.compile of the whole path (`compiled`: inductor with its own
  CUDA graphs) within the quality guard. On the CPU the CUDA-graph row is skipped and compile runs on the CPU;
- training: one step of each stage's real objective in the training loop's Trainer
  (bench.speed.training.training_step) at full size, in the precision the paper preset trains it in and at its
  per-GPU batch (sweeps/preset/paper.yaml's global batch over the example cluster's 8 GPUs:
  bench.speed.training.paper_loop), with the peak memory it took: stage1 and stage2 of TiTok-L-32, single-stage
  training of TiTok-BL-64-VQ, the generator MaskGIT-ViT:TiTok-L-32 on the fly (and from pretokenized ids): the
  asked-for precision ran, every log is finite, every optimizer's module changed (fp16: within FP16_TRIES steps, the
  gradient scaler skipping its overflowing first steps);
- nccl: a process group of one rank (NCCL on CUDA, gloo on the CPU) on a free local port: all_reduce, barrier,
  bench.core.dist's helpers, destroy;
- ddp: two processes started by torchrun (NCCL on two GPUs; gloo on the CPU; skipped on a one-GPU machine): a toy
  stage-1 step of the Trainer under DistributedDataParallel with two micro-batches (the first under no_sync) on
  different data per rank, after which both ranks hold the same gradients and weights, and bench.core.dist's
  gather_tensors (uneven shards), all_reduce_sum, main_rank_says and barrier over that group;
- generation: the TiTok-L-32 generation benchmark with de-tokenisation at batch 256, its paper sampler settings
  (bench.speed.measure.generation_runner, timed interleaved with parity), samples/s and the share of the measured
  bf16 peak (target >= 50% on an H100/H200: reported, not enforced), and each mode's tokens/PSNR against parity;
- train_speed: stage-1 TiTok-L-32 training throughput in the paper's stage-1 precision (fp16) at its per-GPU batch
  (bench.speed.training.measure_training), images/s;
- total: the wall time of the run against the 8-minute budget (enforced for the full-size CUDA run only).
After the table, lines starting "# not checked:" say what this run left out (no multi-rank row on a one-GPU
machine, CUDA-only checks on a CPU, toy batches instead of the paper's, ...).

Weights are random (models.build): the timings are those of the released models, the images are not meaningful and
the correctness bounds are those of random weights. The exit status is 1 when a row FAILs, else 0 (also when no CUDA
device is present: one line says the check was skipped).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

import models
from bench.core import dist as D

from .factories import build_generator, build_tokenizer, generator_config, teacher_for, tokenizer_config
from .measure import generation_runner
from .paths import GUARD, InferenceOptions, InferencePipeline, QualityGuard, compare_with_parity, image_psnr
from .timing import environment, matmul_peak, time_interleaved
from .training import TRAIN_STAGES, measure_training, paper_loop, training_step

SKIP_MESSAGE = "no CUDA device: skipped"
BUDGET_S = 480.0  # the whole full-size CUDA run
PEAK_TARGET = 0.5  # the target share of the bf16 matmul peak for generation at batch 256 on an H100/H200
FP16_TRIES = 8  # fp16 steps allowed before every module must have changed (GradScaler backs off from 2**16)

TOKENIZER, GENERATOR, SINGLE_STAGE = "TiTok-L-32", "MaskGIT-ViT:TiTok-L-32", "TiTok-BL-64-VQ"
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
CHECKS = ("peak", "paths", "graphs", "training", "nccl", "ddp", "generation", "train_speed")
DDP_RANKS = 2
DDP_TIMEOUT_S = 300.0  # the torchrun of the ddp check, start-up included
OK, FAIL, SKIP, INFO = "ok", "FAIL", "skip", "info"


@dataclass
class Config:
    """What the checks run: full size on CUDA by default; `toy` shrinks the models and batches (factories' toy
    sizes) so that every check runs on a CPU in about a minute."""

    device: torch.device
    toy: bool = False
    path_batch: int = 8
    gen_batch: int = 256
    gen_modes: tuple[str, ...] = ("fast", "compiled")
    train_batch: int | None = None  # the training steps (None: each stage's paper per-GPU batch, paper_loop)
    speed_batch: int | None = None  # stage-1 throughput (None: stage 1's paper per-GPU batch)
    warmup: int = 1
    repeats: int = 3
    num_steps: int | None = None  # sampler steps (None: the generator's paper settings)
    peak_budget_s: float = 3.0
    seed: int = 0

    @classmethod
    def for_run(cls, device: str, toy: bool, **overrides) -> Config:
        # toy: the generation benchmark without `compiled` (inductor's C++ build takes minutes on a small CPU; the
        # graphs check still compiles)
        base = (
            dict(
                path_batch=2,
                gen_batch=4,
                gen_modes=("fast",),
                train_batch=2,
                speed_batch=2,
                repeats=1,
                num_steps=2,
                peak_budget_s=0.5,
            )
            if toy
            else {}
        )
        return cls(torch.device(device), toy, **{**base, **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def model(self) -> str:
        return " (toy)" if self.toy else ""

    @property
    def full_cuda(self) -> bool:
        return self.device.type == "cuda" and not self.toy


@dataclass
class Row:
    check: str
    subject: str
    setting: str
    result: str
    bound: str = ""
    status: str = OK
    seconds: float | None = None
    values: dict = field(default_factory=dict)


# ---- helpers -----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _pair(cfg: Config, state: dict) -> tuple[models.TiTok, models.MaskGITGenerator, models.MaskGITVQGAN | None]:
    """TiTok-L-32, its generator and (for a stage-1-form tokenizer) a teacher, random, on the device: built once per
    run (kept in `state`), as building full-size models on the CPU costs seconds."""
    if "pair" not in state:
        torch.manual_seed(cfg.seed)
        tok = build_tokenizer(TOKENIZER, toy=cfg.toy)
        gen = build_generator(GENERATOR, tok, toy=cfg.toy)
        teacher = teacher_for(tok)
        teacher = teacher.to(cfg.device) if teacher is not None else None
        state["pair"] = (tok.to(cfg.device), gen.to(cfg.device), teacher)
    return state["pair"]


def _settings(cfg: Config, gen: models.MaskGITGenerator):
    return gen.config.sampler.updated(num_steps=cfg.num_steps) if cfg.num_steps else gen.config.sampler


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


# ---- the checks ----------------------------------------------------------------------------------------------------
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
    tok, gen, teacher = _pair(cfg, state)
    settings = _settings(cfg, gen)
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
        q = compare_with_parity(
            tok,
            gen,
            options=pipe.options,
            batch_size=cfg.path_batch,
            seed=cfg.seed,
            sampler_settings=settings,
            teacher=teacher,
        )
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
    tok, gen, teacher = _pair(cfg, state)
    settings = _settings(cfg, gen)
    subject = f"{TOKENIZER} + {GENERATOR}{cfg.model}"
    rows = []
    if cfg.device.type == "cuda":
        t0 = time.perf_counter()
        q = compare_with_parity(
            tok,
            gen,
            options=InferenceOptions(cuda_graphs=True),
            batch_size=cfg.path_batch,
            seed=cfg.seed,
            sampler_settings=settings,
            teacher=teacher,
        )
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
    q = compare_with_parity(
        tok,
        gen,
        options=pipe.options,
        batch_size=cfg.path_batch,
        seed=cfg.seed,
        sampler_settings=settings,
        teacher=teacher,
    )
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


def check_nccl(cfg: Config, state: dict) -> list[Row]:
    """A process group of one rank on a free local port: NCCL on CUDA (gloo on the CPU, as bench.core.dist.setup
    picks), all_reduce of a device tensor, barrier, destroy."""
    t0 = time.perf_counter()
    backend = "nccl" if cfg.device.type == "cuda" else "gloo"
    if dist.is_initialized():
        return [Row("process group", backend, "world 1", "a process group already exists here", "", FAIL)]
    port = free_port()
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, timeout=datetime.timedelta(seconds=60)
    )
    try:
        x = torch.arange(4, dtype=torch.float32, device=cfg.device)
        dist.all_reduce(x)
        D.barrier()
        got = dist.get_backend()
        ok = torch.equal(x.cpu(), torch.arange(4.0)) and got == backend
    finally:
        dist.destroy_process_group()
    result = f"{got} on port {port}: init, all_reduce, barrier, destroy"
    return [
        Row(
            "process group",
            backend,
            "world 1",
            result + ("" if ok else ": wrong values"),
            "all_reduce of one rank is the identity",
            OK if ok else FAIL,
            time.perf_counter() - t0,
        )
    ]


def check_ddp(cfg: Config, state: dict) -> list[Row]:
    """DDP_RANKS processes started by torchrun running `ddp_worker` (NCCL on CUDA, gloo on the CPU); skipped where
    fewer CUDA devices than ranks are visible."""
    backend = "nccl" if cfg.device.type == "cuda" else "gloo"
    subject, setting = f"DDP over {backend}", f"torchrun, {DDP_RANKS} processes, toy stage-1 Trainer step"
    if cfg.device.type == "cuda" and torch.cuda.device_count() < DDP_RANKS:
        return [
            Row(
                "multi-rank",
                subject,
                setting,
                f"{torch.cuda.device_count()} CUDA device(s) here: needs {DDP_RANKS}",
                "",
                SKIP,
            )
        ]
    t0 = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="titok-bench-ddp-"))
    try:
        launcher = shutil.which("torchrun", path=str(Path(sys.executable).parent))
        command = [launcher] if launcher else [sys.executable, "-m", "torch.distributed.run"]
        command += [
            "--standalone",
            f"--nproc_per_node={DDP_RANKS}",
            "-m",
            "bench.speed.gpu_check",
            "--ddp-worker",
            str(folder),
            "--device",
            "cuda" if cfg.device.type == "cuda" else "cpu",
        ]
        root = str(Path(__file__).resolve().parents[2])  # the ranks import this checkout's bench
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            OMP_NUM_THREADS="1",
        )
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=DDP_TIMEOUT_S)
        outs = [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or len(outs) != DDP_RANKS:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return [
            Row(
                "multi-rank",
                subject,
                setting,
                f"torchrun exit {done.returncode}: {tail[0][:300]}",
                "every rank agrees",
                FAIL,
                seconds,
            )
        ]
    failed = sorted({name for out in outs for name, ok in out["checks"].items() if not ok})
    result = (
        f"{outs[0]['backend']}, world {outs[0]['world']}: "
        + ", ".join(outs[0]["checks"])
        + ("; fails " + ", ".join(failed) if failed else "")
    )
    return [
        Row(
            "multi-rank",
            subject,
            setting,
            result,
            "every rank agrees",
            FAIL if failed else OK,
            seconds,
            {"ranks": outs},
        )
    ]


def ddp_worker(folder: str, device: str) -> None:
    """One rank of the ddp check (under torchrun): writes `folder`/rank<r>.json with each check's outcome."""
    info = D.setup(device)
    torch.manual_seed(0)
    tok_cfg = tokenizer_config(TOKENIZER, toy=True)
    step = training_step("stage1", tok_cfg, batch_size=4, precision="fp32", seed=0, info=info, grad_accum=2)
    g = torch.Generator(info.device).manual_seed(1 + info.rank)  # each rank its own images
    images = torch.rand(step.batch[0].shape, generator=g, device=info.device)
    before = [p.detach().clone() for p in step.trainer.objective.modules["tokenizer"].parameters()]
    step.batch = (images, *step.batch[1:])
    step()
    params = list(step.trainer.objective.modules["tokenizer"].parameters())
    grads = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
    weights = torch.cat([p.detach().flatten() for p in params])
    both = D.gather_tensors(
        torch.stack(
            [grads.double().sum(), grads.double().abs().sum(), weights.double().sum(), weights.double().abs().sum()]
        )[None]
    )
    checks = {
        "DDP step with no_sync on rank data": bool(torch.equal(both[0], both[1])),
        "weights updated": any(not torch.equal(a, b.detach()) for a, b in zip(before, params)),
    }
    rows = D.gather_tensors(torch.full((info.rank + 1, 2), float(info.rank), device=info.device))
    checks["gather_tensors (uneven)"] = rows.shape == (3, 2) and rows[:, 0].tolist() == [0.0, 1.0, 1.0]
    total = D.all_reduce_sum(torch.ones(1, device=info.device))
    checks["all_reduce_sum"] = total.item() == info.world_size
    checks["main_rank_says"] = D.main_rank_says(info.is_main, info.device)  # rank 0's True on every rank
    D.barrier()
    Path(folder, f"rank{info.rank}.json").write_text(
        json.dumps({"rank": info.rank, "world": info.world_size, "backend": dist.get_backend(), "checks": checks})
    )
    dist.destroy_process_group()


def check_generation(cfg: Config, state: dict) -> list[Row]:
    """The generation benchmark at batch cfg.gen_batch (generation_runner: sampling with de-tokenisation), each mode
    timed interleaved with parity, samples/s, share of the bf16 peak, and tokens/PSNR against parity."""
    tok, gen, teacher = _pair(cfg, state)
    settings = _settings(cfg, gen)
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


CHECK_FUNCTIONS: dict[str, Callable[[Config, dict], list[Row]]] = {
    "peak": check_peak,
    "paths": check_paths,
    "graphs": check_graphs,
    "training": check_training,
    "nccl": check_nccl,
    "ddp": check_ddp,
    "generation": check_generation,
    "train_speed": check_train_speed,
}


def not_checked(cfg: Config, checks: tuple[str, ...], rows: list[Row]) -> list[str]:
    """What this run did not check, one plain line each."""
    out = [f"the {name} check (not asked for)" for name in CHECKS if name not in checks]
    if "ddp" in checks and any(r.check == "multi-rank" and r.status == SKIP for r in rows):
        out.append(
            f"no multi-rank NCCL row: DDP, no_sync and gather_tensors over NCCL need {DDP_RANKS} GPUs, "
            f"this machine has {torch.cuda.device_count()}"
        )
    if cfg.device.type != "cuda":
        out.append(
            "CUDA: NCCL, CUDA graphs, CUDA autocast and GPU memory were not exercised (ran on the CPU; the "
            "CPU may run fp16/bf16 steps in fp32, as the rows say)"
        )
    if cfg.toy:
        out.append(
            "full-size models and the paper's per-GPU batches (out-of-memory would show only there): toy sizes ran"
        )
    if "training" in checks:
        out.append("training in a precision other than the paper preset's for each stage (one precision per stage ran)")
    out += [
        "more than one node (inter-node NCCL), data loading and checkpoint writes",
        "numbers with trained weights: every model is random",
    ]
    return out


# ---- the run -------------------------------------------------------------------------------------------------------
def run_checks(cfg: Config, checks: tuple[str, ...] = CHECKS, log: Callable[[str], None] | None = None) -> list[Row]:
    """Every check in turn; a check that raises is one FAIL row with its error, and the next one still runs."""
    state: dict = {}
    rows: list[Row] = []
    start = time.perf_counter()
    for name in checks:
        t0 = time.perf_counter()
        if log:
            log(f"{name} ...")
        try:
            new = CHECK_FUNCTIONS[name](cfg, state)
        except Exception as e:  # noqa: BLE001 - the table reports it; the other checks still run
            new = [
                Row(
                    name,
                    "",
                    "",
                    f"{type(e).__name__}: {e}".splitlines()[0][:300],
                    "runs",
                    FAIL,
                    time.perf_counter() - t0,
                )
            ]
            release(cfg.device)
        rows.extend(new)
        if log:
            for r in new:
                log(f"  {r.status:5} {r.subject} {r.setting}: {r.result}")
    total = time.perf_counter() - start
    if cfg.full_cuda and set(checks) == set(CHECKS):
        rows.append(
            Row(
                "total",
                "wall time",
                "all checks",
                f"{total:.0f} s",
                f"<= {BUDGET_S:.0f} s",
                OK if total <= BUDGET_S else FAIL,
                total,
            )
        )
    else:
        rows.append(Row("total", "wall time", ", ".join(checks), f"{total:.0f} s", "", INFO, total))
    return rows


COLUMNS = (
    ("check", "check"),
    ("subject", "subject"),
    ("setting", "setting"),
    ("result", "result"),
    ("bound", "bound"),
    ("status", "status"),
    ("seconds", "s"),
)


def format_table(rows: list[Row]) -> str:
    cells = [[title for _, title in COLUMNS]]
    for r in rows:
        cells.append(
            [
                f"{r.seconds:.1f}"
                if key == "seconds" and r.seconds is not None
                else str(getattr(r, key) if getattr(r, key) is not None else "")
                for key, _ in COLUMNS
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def header(cfg: Config) -> dict:
    out = environment(cfg.device)
    out.update(
        cuda=torch.version.cuda if cfg.device.type == "cuda" else f"none (torch built for {torch.version.cuda})",
        cudnn=torch.backends.cudnn.version() if cfg.device.type == "cuda" else None,
        toy=cfg.toy,
        config={k: str(v) for k, v in dataclasses.asdict(cfg).items()},
    )
    return out


def write_json(
    path: str, head: dict, rows: list[Row] | None, skipped: str | None = None, unchecked: list[str] | None = None
) -> None:
    data = {
        "environment": head,
        "skipped": skipped,
        "rows": [dataclasses.asdict(r) for r in rows or []],
        "not_checked": unchecked or [],
    }
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.speed.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", default="cuda", help="cuda or cuda:N (default); cpu for a developer run")
    p.add_argument("--toy", action="store_true", help="toy sizes (64 px, toy-L, small batches): a CPU smoke run")
    p.add_argument("--checks", type=_csv, default=CHECKS, help=f"comma list of {', '.join(CHECKS)}")
    p.add_argument("--json", metavar="OUT", help="write the environment and the table's rows as JSON")
    p.add_argument("--gen-batch", type=int, help="generation benchmark batch (default 256; toy 4)")
    p.add_argument("--gen-modes", type=_csv, help="generation benchmark modes beside parity (default fast,compiled)")
    p.add_argument(
        "--train-batch", type=int, help="training steps' batch (default: each stage's paper per-GPU batch; toy 2)"
    )
    p.add_argument(
        "--speed-batch", type=int, help="stage-1 throughput batch (default: the paper's per-GPU batch, 32; toy 2)"
    )
    p.add_argument("--repeats", type=int, help="timed runs of the benchmarks (default 3; toy 1)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--ddp-worker", metavar="FOLDER", help=argparse.SUPPRESS)  # one rank of the ddp check
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args.ddp_worker, args.device)
        return 0
    unknown = sorted(set(args.checks) - set(CHECKS))
    if unknown:
        raise SystemExit(f"unknown checks {unknown}; expected some of {', '.join(CHECKS)}")
    D.check_device(args.device)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"{SKIP_MESSAGE} (torch {torch.__version__} sees none; `--device cpu --toy` runs the checks at toy "
            f"size on the CPU)"
        )
        if args.json:
            write_json(args.json, {"torch": torch.__version__}, None, SKIP_MESSAGE)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config.for_run(
        args.device,
        args.toy,
        gen_batch=args.gen_batch,
        gen_modes=args.gen_modes,
        train_batch=args.train_batch,
        speed_batch=args.speed_batch,
        repeats=args.repeats,
    )
    if cfg.device.type == "cuda":
        torch.cuda.set_device(cfg.device)
    head = header(cfg)
    rows = run_checks(cfg, args.checks, log=lambda m: print(m, file=sys.stderr, flush=True))
    failed = [r for r in rows if r.status == FAIL]
    print(
        f"# GPU check  device: {head['device']}  torch {head['torch']}  CUDA {head['cuda']}"
        f"{'  (toy sizes)' if cfg.toy else ''}"
    )
    print(
        "# weights: random (models.build): timings are the released models', images and agreement bounds are those "
        "of random weights; FLOPs analytic (bench/speed/flops.py)"
    )
    print(format_table(rows))
    print(f"# {len(failed)} of {len(rows)} rows FAIL" if failed else f"# all {len(rows)} rows pass (ok/info/met/below)")
    unchecked = not_checked(cfg, args.checks, rows)
    for line in unchecked:
        print(f"# not checked: {line}")
    if args.json:
        write_json(args.json, head, rows, unchecked=unchecked)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
