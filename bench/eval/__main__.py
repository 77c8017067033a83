"""Evaluate a tokenizer (and a generator on its tokens): rFID and friends, gFID (ADM protocol), linear probe.

    # a released tokenizer on ImageNet val (weights from the cache: python -m bench.weights list / fetch)
    python -m bench.eval TiTok-L-32 --data imagenet --data-root /data/imagenet --num-images 50000 --metrics rfid
    # its released generator (MaskGIT-ViT:TiTok-L-32), 50k class-balanced samples vs ADM's reference batch, 8 GPUs
    torchrun --nproc_per_node 8 -m bench.eval TiTok-L-32 --metrics gfid --num-samples 50000 \\
        --reference-batch VIRTUAL_imagenet256_labeled.npz --samples-dir samples/ --out l32_gfid.json
    # one of our checkpoints, offline, stand-ins for missing pretrained networks (every number tagged random)
    python -m bench.eval outputs/pipeline/TiTok-S-32/stage2-1a2b3c4d/model.safetensors --data synthetic \\
        --num-images 256 --metrics rfid,lpips,probe --allow-random-weights --out result.json
    # gFID of our generator on synthetic data, against a reference batch made once from the same data
    python -m bench.eval tok.safetensors --generator gen.safetensors --data synthetic --metrics gfid \\
        --num-images 1000 --num-samples 1000 --reference-batch ref_synthetic.npz --make-reference-batch

Metrics (--metrics, comma-separated): rfid (rfid, rfid_is, psnr, ssim, codebook usage/entropy), lpips (adds
LPIPS to the reconstruction run), gfid (samples to an ADM .npz, then gfid, gfid_clean, gfid_is, sfid,
precision, recall), probe (probe_top1). The flags become the specs of the sweep's evaluation stages, and the
stages' own `run` computes the numbers (bench/stages: real_stats, eval_recon, reference_batch, eval_gen, probe),
so a number here equals the sweep's for the same checkpoint and settings. Inception runs in float64 for rFID (the
reference's evaluator) and float32 for gFID (ADM's), as in the sweep, unless --inception-dtype says otherwise; the
report records the dtype. Under torchrun every rank takes a slice (one node; on several, pass --real-stats on a
shared folder). Missing weights, data or reference batch end with a message that says what to do (exit status 2).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

import models
from bench import weights
from bench.core import dist as D
from bench.core.io import atomic_write_json
from bench.core.loading import SetupError, load_model
from bench.data import DatasetError
from bench.eval.probe import DEFAULT_FEATURES, FEATURES
from bench.stages import (
    Context,
    DataConfig,
    EvalGenSpec,
    EvalReconSpec,
    ProbeSpec,
    RealStatsSpec,
    ReferenceBatchSpec,
    eval_gen,
    eval_recon,
    probe,
    real_stats,
    reference_batch,
)
from bench.tracking import METRICS

METRIC_GROUPS = ("rfid", "lpips", "gfid", "probe")
SAMPLER_FLAGS = ("num_steps", "guidance_scale", "guidance_decay", "guidance_scale_pow", "randomize_temperature")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.eval",
        description=__doc__.splitlines()[0],
        epilog="examples:\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "tokenizer",
        help="released name (TiTok-L-32), grid cell name (with --allow-random-weights), "
        "our .safetensors checkpoint, a hub-style folder or an official .bin",
    )
    ap.add_argument("--metrics", default="rfid", help=f"comma-separated subset of {','.join(METRIC_GROUPS)}")
    ap.add_argument("--generator", help="gfid: generator name or checkpoint (default: the tokenizer's released one)")
    ap.add_argument(
        "--teacher",
        default=weights.TEACHER,
        help="MaskGIT-VQGAN that decodes a stage-1-form tokenizer's proxy codes (name or checkpoint)",
    )
    g = ap.add_argument_group("data")
    g.add_argument("--data", default="imagenet", choices=["imagenet", "synthetic"])
    g.add_argument("--data-root", help="imagenet: folder with train/ and val/ class folders")
    g.add_argument("--split", default="val", help="evaluation split (rfid, reference batch, probe validation)")
    g.add_argument("--num-images", type=int, default=50_000, help="evaluation images (imagenet: balanced subset)")
    g.add_argument(
        "--num-classes",
        type=int,
        help="synthetic: classes (default 10); imagenet: the first N classes; "
        "gfid: the classes sampled (default: the generator's)",
    )
    g.add_argument("--image-size", type=int, help="default: the tokenizer's resolution")
    g.add_argument("--data-seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--num-workers", type=int, default=4)
    g = ap.add_argument_group("rfid")
    g.add_argument(
        "--real-stats",
        help="cache of the real images' Inception statistics: read when present, "
        "else computed and written (default: a temporary file)",
    )
    g = ap.add_argument_group("gfid")
    g.add_argument("--reference-batch", help="ADM reference batch .npz (VIRTUAL_imagenet256_labeled.npz layout)")
    g.add_argument(
        "--make-reference-batch",
        action="store_true",
        help="when --reference-batch does not exist, build it from --num-images images of --data",
    )
    g.add_argument("--num-samples", type=int, default=50_000)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--sample-batch-size", type=int, default=32)
    g.add_argument(
        "--samples-dir",
        default="samples",
        help="where the samples .npz (reused when present) and a samples.png grid of them go",
    )
    g.add_argument("--png", action="store_true", help="also write the samples as PNGs")
    g.add_argument("--num-steps", type=int)
    g.add_argument("--guidance-scale", type=float)
    g.add_argument("--guidance-decay", choices=["constant", "linear", "power-cosine"])
    g.add_argument("--guidance-scale-pow", type=float)
    g.add_argument("--randomize-temperature", type=float)
    g.add_argument("--no-softmax-temperature-annealing", action="store_true")
    g.add_argument("--no-clean-fid", action="store_true", help="skip clean-fid's FID (gfid_clean), the second backend")
    g = ap.add_argument_group("probe")
    g.add_argument("--probe-num-train", type=int, default=50_000, help="training images of the linear probe")
    g.add_argument("--probe-epochs", type=int, default=100, help="full-batch L-BFGS iterations")
    g.add_argument(
        "--probe-features",
        default=DEFAULT_FEATURES,
        choices=list(FEATURES),
        help="where the pooled encoder features are read (the paper says only 'global pooling'): "
        + "; ".join(f"{k}: {v}" for k, v in FEATURES.items()),
    )
    g = ap.add_argument_group("run")
    g.add_argument(
        "--fid-method",
        default="sqrtm",
        choices=["sqrtm", "eigh"],
        help="matrix square root of the Frechet distance (sqrtm: the reference's and ADM's)",
    )
    g.add_argument(
        "--inception-dtype",
        choices=["float32", "float64"],
        help="for rFID and gFID alike (default: the protocol's, float64 for rFID, float32 for gFID)",
    )
    g.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="seeded random stand-ins for missing pretrained weights; results are tagged random",
    )
    g.add_argument("--device", default="auto", help=f"{D.DEVICES} (under torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--out", help="write the result as JSON here")
    return ap.parse_args(argv)


def metric_groups(text: str) -> set[str]:
    chosen = {m.strip() for m in text.split(",") if m.strip()}
    unknown = chosen - set(METRIC_GROUPS)
    if unknown or not chosen:
        raise SetupError(f"--metrics {text!r}: choose from {', '.join(METRIC_GROUPS)}")
    return chosen


def sampler_overrides(args: argparse.Namespace) -> dict:
    out = {k: getattr(args, k) for k in SAMPLER_FLAGS if getattr(args, k) is not None}
    if args.no_softmax_temperature_annealing:
        out["softmax_temperature_annealing"] = False
    return out


@contextmanager
def scratch_folder(info: D.DistInfo) -> Iterator[Path]:
    """A temporary folder that every rank of one node sees (the real-image statistics without --real-stats),
    removed at the end."""
    box = [tempfile.mkdtemp(prefix="titok-eval-") if info.is_main else None]
    if info.distributed and dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    try:
        yield Path(box[0])
    finally:
        if info.is_main:
            shutil.rmtree(box[0], ignore_errors=True)


def evaluate(args: argparse.Namespace, info: D.DistInfo) -> dict:
    """Map the flags to the evaluation stages' specs, run the chosen metric groups through the stages, and return
    the report (the same on every rank)."""
    groups = metric_groups(args.metrics)
    tok = load_model(args.tokenizer, "tokenizer", args.allow_random_weights)  # fails early; its label and resolution
    data = DataConfig(
        name=args.data,
        root=args.data_root,
        image_size=args.image_size or tok.model.config.image_size,
        num_classes=args.num_classes,
        num_workers=args.num_workers,
        seed=args.data_seed,
    )
    common = dict(allow_random_weights=args.allow_random_weights, batch_size=args.batch_size, device=args.device)
    report: dict = {"tokenizer": tok.label, "metrics": {}, "timings_s": {}, "inception_dtype": {}}
    random: dict[str, bool] = {}

    def run(stage, spec, out: str | Path) -> dict:
        result = stage.run(spec, Context(Path(out), info))
        for name, was_random in result.get("random_weights", {}).items():
            random[name] = random.get(name, False) or was_random
        report["metrics"].update(result["metrics"])
        return result

    with scratch_folder(info) as scratch:
        if groups & {"rfid", "lpips"}:
            t0 = time.perf_counter()
            dtype = args.inception_dtype or real_stats.INCEPTION_DTYPE
            stats = run(
                real_stats,
                RealStatsSpec(
                    data=data,
                    num_images=args.num_images,
                    split=args.split,
                    inception_dtype=dtype,
                    path=args.real_stats,
                    **common,
                ),
                scratch,
            )
            recon = run(
                eval_recon,
                EvalReconSpec(
                    tokenizer=args.tokenizer,
                    real_stats=stats["path"],
                    data=data,
                    num_images=args.num_images,
                    split=args.split,
                    teacher=args.teacher,
                    lpips="lpips" in groups,
                    fid_method=args.fid_method,
                    inception_dtype=dtype,
                    **common,
                ),
                scratch,
            )
            report["data"] = recon["data"]
            report["inception_dtype"]["rfid"] = dtype
            report["timings_s"]["reconstruction"] = time.perf_counter() - t0
        if "gfid" in groups:
            t0 = time.perf_counter()
            generator = args.generator or getattr(models.VARIANTS.get(args.tokenizer), "generator", None)
            if generator is None:
                raise SetupError(f"{args.tokenizer} has no released generator: pass --generator (a name or file)")
            if not args.reference_batch:
                raise SetupError("gfid needs --reference-batch (e.g. VIRTUAL_imagenet256_labeled.npz)")
            dtype = args.inception_dtype or reference_batch.INCEPTION_DTYPE
            if not Path(args.reference_batch).is_file():
                if not args.make_reference_batch:
                    raise SetupError(
                        f"reference batch {args.reference_batch} does not exist: download "
                        "VIRTUAL_imagenet256_labeled.npz (guided-diffusion's evaluation suite) for "
                        "ImageNet 256, or add --make-reference-batch to build one from --data"
                    )
                run(
                    reference_batch,
                    ReferenceBatchSpec(
                        data=data,
                        num_images=args.num_images,
                        split=args.split,
                        inception_dtype=dtype,
                        path=args.reference_batch,
                        **common,
                    ),
                    Path(args.reference_batch).parent,
                )
            gen = run(
                eval_gen,
                EvalGenSpec(
                    generator=generator,
                    tokenizer=args.tokenizer,
                    reference_batch=args.reference_batch,
                    num_samples=args.num_samples,
                    num_classes=args.num_classes,
                    teacher=args.teacher,
                    sampler=sampler_overrides(args),
                    seed=args.seed,
                    fid_method=args.fid_method,
                    clean_fid=not args.no_clean_fid,
                    inception_dtype=dtype,
                    sample_batch_size=args.sample_batch_size,
                    png=args.png,
                    model_name=tok.label,
                    **common,
                ),
                args.samples_dir,
            )
            report["generator"] = gen["generator"]
            report["samples"] = {"path": gen["npz"], **gen["samples"]}
            report["inception_dtype"]["gfid"] = dtype
            report["timings_s"]["generation"] = time.perf_counter() - t0
        if "probe" in groups:
            t0 = time.perf_counter()
            result = run(
                probe,
                ProbeSpec(
                    tokenizer=args.tokenizer,
                    data=data,
                    num_train=args.probe_num_train,
                    num_val=args.num_images,
                    split=args.split,
                    epochs=args.probe_epochs,
                    features=args.probe_features,
                    **common,
                ),
                scratch,
            )
            report.setdefault("data", result["data"])
            report["probe_features"] = args.probe_features
            report["timings_s"]["probe"] = time.perf_counter() - t0
    report.update(
        weights_random=random,
        random=any(random.values()),
        device=str(info.device),
        world_size=info.world_size,
        settings=vars(args),
    )
    return report


def print_report(report: dict) -> None:
    print(
        f"titok-bench eval: {report['tokenizer']}"
        + (f" + {report['generator']}" if "generator" in report else "")
        + f" ({report['device']} x {report['world_size']})"
    )
    if report["random"]:
        standins = ", ".join(k for k, v in report["weights_random"].items() if v)
        print(f"  RANDOM STAND-IN WEIGHTS ({standins}): smoke-test numbers, never comparable with the paper")
    for key, value in report["metrics"].items():
        shown = f"{value:>12.4f}" if isinstance(value, float) else f"{value:>12}"
        print(f"  {key:<18} {shown}   {METRICS.get(key, '')}")


def write_json(report: dict, path: str) -> None:
    atomic_write_json(path, report, sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        info = D.setup(args.device)
    except ValueError as err:  # a device this machine or the harness does not have
        print(f"error: --device: {err}", file=sys.stderr)
        return 2
    try:
        report = evaluate(args, info)
    except (
        weights.MissingWeightsError,
        DatasetError,
        SetupError,
        models.state_dicts.CheckpointError,
        FileNotFoundError,
    ) as err:
        if info.is_main:
            print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if info.distributed and dist.is_initialized():
            dist.destroy_process_group()
    if info.is_main:
        print_report(report)
        if args.out:
            write_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
