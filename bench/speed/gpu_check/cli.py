"""The GPU check: CUDA correctness and speed of the harness on one GPU, in one table (within 8 minutes on one GPU).

    .venv/bin/nox -s gpu                                  # the session (ends "skipped" without a CUDA device)
    python -m bench.speed.gpu_check                       # the same; --json OUT writes the table's rows
    python -m bench.speed.gpu_check --device cpu --toy    # developer: every check at toy size on the CPU
    python -m bench.speed.gpu_check --checks paths,nccl   # some checks only (names below)

Checks, in order (each one function of this package: inference.py, training_steps.py, distributed.py, returning
rows; a check that raises is a FAIL row and the others still run):
- peak: the measured bf16 matmul peak (bench.speed.timing.matmul_peak, square matmuls up to 8192 on CUDA), the
  reference of the "% peak" column;
- paths: every inference path of bench.speed.paths (naive, parity, fast, auto) against the exact fp32 parity path on
  a fixed seed (compare_with_parity: sampled-token agreement, image PSNR, decode PSNR of the same tokens, encode
  agreement), TiTok-L-32 + MaskGIT-ViT:TiTok-L-32 at full size; naive within NEAR_EXACT, parity identical to itself
  (determinism), fast and auto within the quality guard (bench.speed.guard.GUARD);
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
import sys

import torch

from bench.core import dist as D

from ..timing import environment
from .config import CHECKS, Config
from .distributed import ddp_worker
from .run import not_checked, run_checks
from .table import FAIL, format_table, write_json

SKIP_MESSAGE = "no CUDA device: skipped"


def header(cfg: Config) -> dict:
    out = environment(cfg.device)
    out.update(
        cuda=torch.version.cuda if cfg.device.type == "cuda" else f"none (torch built for {torch.version.cuda})",
        cudnn=torch.backends.cudnn.version() if cfg.device.type == "cuda" else None,
        toy=cfg.toy,
        config={k: str(v) for k, v in dataclasses.asdict(cfg).items()},
    )
    return out


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
