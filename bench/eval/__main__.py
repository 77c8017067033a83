"""Evaluate a tokenizer (and a generator on its tokens): rFID and friends, gFID (ADM protocol), linear probe.

    # a released tokenizer on ImageNet val (weights from the cache: python -m bench.weights list / fetch)
    python -m bench.eval TiTok-L-32 --data imagenet --data-root /data/imagenet --num-images 50000 --metrics rfid
    # its released generator (MaskGIT-ViT:TiTok-L-32), 50k class-balanced samples vs ADM's reference batch, 8 GPUs
    torchrun --nproc_per_node 8 -m bench.eval TiTok-L-32 --metrics gfid --num-samples 50000 \\
        --reference-batch VIRTUAL_imagenet256_labeled.npz --samples-dir samples/ --out l32_gfid.json
    # one of our checkpoints, offline, stand-ins for missing pretrained networks (every number tagged random)
    python -m bench.eval outputs/latent_vs_size/TiTok-S-32-1a2b3c/stage2/model.safetensors --data synthetic \\
        --num-images 256 --metrics rfid,lpips,probe --allow-random-weights --out result.json
    # gFID of our generator on synthetic data, against a reference batch made once from the same data
    python -m bench.eval tok.safetensors --generator gen.safetensors --data synthetic --metrics gfid \\
        --num-images 1000 --num-samples 1000 --reference-batch ref_synthetic.npz --make-reference-batch

Metrics (--metrics, comma-separated): rfid (rfid, rfid_is, psnr, ssim, codebook usage/entropy), lpips (adds
LPIPS to the reconstruction run), gfid (samples to an ADM .npz, then gfid, gfid_clean, gfid_is, sfid,
precision, recall), probe (probe_top1). Inception runs in float64 for rFID (the reference's evaluator) and
float32 for gFID (ADM's) unless --inception-dtype says otherwise. Under torchrun every rank takes a slice.
Missing weights, data or reference batch end with a message that says what to do (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch.distributed as dist

import models
from bench import weights
from bench.core import dist as D
from bench.core.io import atomic_write_json
from bench.core.loading import SetupError, load_eval_teacher, load_generator, load_model
from bench.data import DatasetError, build_dataset
from bench.eval.generation import evaluate_generation, make_reference_batch
from bench.eval.inception import InceptionFeatures
from bench.eval.probe import linear_probe
from bench.eval.reconstruction import (
    evaluate_reconstruction,
    load_feature_stats,
    real_feature_stats,
    save_feature_stats,
)
from bench.eval.sample import sample_to_npz, sampler_settings
from bench.perceptual import LPIPS
from bench.tracking import METRICS

METRIC_GROUPS = ("rfid", "lpips", "gfid", "probe")
SAMPLER_FLAGS = ("num_steps", "guidance_scale", "guidance_decay", "guidance_scale_pow", "randomize_temperature")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.eval", description=__doc__.splitlines()[0],
                                 epilog="examples:\n" + __doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokenizer", help="released name (TiTok-L-32), grid cell name (with --allow-random-weights), "
                                      "our .safetensors checkpoint, a hub-style folder or an official .bin")
    ap.add_argument("--metrics", default="rfid", help=f"comma-separated subset of {','.join(METRIC_GROUPS)}")
    ap.add_argument("--generator", help="gfid: generator name or checkpoint (default: the tokenizer's released one)")
    ap.add_argument("--teacher", default=weights.TEACHER,
                    help="MaskGIT-VQGAN that decodes a stage-1-form tokenizer's proxy codes (name or checkpoint)")
    g = ap.add_argument_group("data")
    g.add_argument("--data", default="imagenet", choices=["imagenet", "synthetic"])
    g.add_argument("--data-root", help="imagenet: folder with train/ and val/ class folders")
    g.add_argument("--split", default="val", help="evaluation split (rfid, reference batch, probe validation)")
    g.add_argument("--num-images", type=int, default=50_000, help="evaluation images (imagenet: balanced subset)")
    g.add_argument("--num-classes", type=int, help="synthetic: classes (default 10); imagenet: the first N classes")
    g.add_argument("--image-size", type=int, help="default: the tokenizer's resolution")
    g.add_argument("--data-seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--num-workers", type=int, default=4)
    g = ap.add_argument_group("rfid")
    g.add_argument("--real-stats", help="cache of the real images' Inception statistics: read when present, "
                                        "else computed and written")
    g = ap.add_argument_group("gfid")
    g.add_argument("--reference-batch", help="ADM reference batch .npz (VIRTUAL_imagenet256_labeled.npz layout)")
    g.add_argument("--make-reference-batch", action="store_true",
                   help="when --reference-batch does not exist, build it from --num-images images of --data")
    g.add_argument("--num-samples", type=int, default=50_000)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--sample-batch-size", type=int, default=32)
    g.add_argument("--samples-dir", default="samples", help="where the samples .npz goes (reused when present)")
    g.add_argument("--png", action="store_true", help="also write the samples as PNGs")
    g.add_argument("--num-steps", type=int)
    g.add_argument("--guidance-scale", type=float)
    g.add_argument("--guidance-decay", choices=["constant", "linear", "power-cosine"])
    g.add_argument("--guidance-scale-pow", type=float)
    g.add_argument("--randomize-temperature", type=float)
    g.add_argument("--no-softmax-temperature-annealing", action="store_true")
    g = ap.add_argument_group("probe")
    g.add_argument("--probe-num-train", type=int, default=50_000, help="training images of the linear probe")
    g.add_argument("--probe-epochs", type=int, default=100, help="full-batch L-BFGS iterations")
    g = ap.add_argument_group("run")
    g.add_argument("--fid-method", default="sqrtm", choices=["sqrtm", "eigh"],
                   help="matrix square root of the Frechet distance (sqrtm: the reference's and ADM's)")
    g.add_argument("--inception-dtype", choices=["float32", "float64"])
    g.add_argument("--allow-random-weights", action="store_true",
                   help="seeded random stand-ins for missing pretrained weights; results are tagged random")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda (under torchrun: cuda:LOCAL_RANK)")
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


def evaluate(args: argparse.Namespace, info: D.DistInfo) -> dict:
    """Load, run the chosen metric groups, and return the report (same on every rank)."""
    groups = metric_groups(args.metrics)
    allow = args.allow_random_weights
    tok = load_model(args.tokenizer, "tokenizer", allow)
    teacher = load_eval_teacher(tok.model, args.teacher, allow)
    random = {"tokenizer": tok.random, **({"teacher": teacher.random} if teacher else {})}
    image_size = args.image_size or tok.model.config.image_size
    inceptions: dict[str, InceptionFeatures] = {}

    def inception(default_dtype: str) -> InceptionFeatures:
        dtype = args.inception_dtype or default_dtype
        if dtype not in inceptions:
            inceptions[dtype] = InceptionFeatures(info.device, allow_random=allow, dtype=dtype)
            random["inception"] = inceptions[dtype].random
        return inceptions[dtype]

    def dataset(split: str, num_images: int):
        return build_dataset(args.data, split=split, image_size=image_size, train=False, root=args.data_root,
                             num_images=num_images, num_classes=args.num_classes, seed=args.data_seed)

    common = dict(info=info, batch_size=args.batch_size)
    report: dict = {"tokenizer": tok.label, "metrics": {}, "timings_s": {}}
    result = report["metrics"]
    if groups & {"rfid", "lpips"}:
        t0 = time.perf_counter()
        val = dataset(args.split, args.num_images)
        inc = inception("float64")
        describe = json.loads(json.dumps({  # as it reads back from the file
            "dataset": val.describe(), "num_images": len(val), "inception_random": inc.random,
            "inception_dtype": args.inception_dtype or "float64"}, default=str))
        real_stats = None
        if args.real_stats and Path(args.real_stats).is_file():
            real_stats, meta = load_feature_stats(args.real_stats)
            if any(meta.get(k) != v for k, v in describe.items()):
                raise SetupError(f"--real-stats {args.real_stats} describe other images or another Inception "
                                     f"({ {k: meta.get(k) for k in describe} }); delete it or pass another path")
        elif args.real_stats:
            real_stats = real_feature_stats(val, len(val), inception=inc, num_workers=args.num_workers, **common)
            if info.is_main:
                save_feature_stats(real_stats, args.real_stats, describe)
        lpips = None
        if "lpips" in groups:
            lpips = LPIPS(allow_random=allow)
            random["lpips"] = lpips.random
        result.update(evaluate_reconstruction(
            tok.model, val, num_images=len(val), inception=inc, teacher=teacher.model if teacher else None,
            real_stats=real_stats, lpips=lpips, fid_method=args.fid_method, num_workers=args.num_workers, **common))
        report["data"] = val.describe()
        report["timings_s"]["reconstruction"] = time.perf_counter() - t0
    if "gfid" in groups:
        t0 = time.perf_counter()
        source = args.generator or getattr(models.VARIANTS.get(args.tokenizer), "generator", None)
        if source is None:
            raise SetupError(f"{args.tokenizer} has no released generator: pass --generator (a name or file)")
        gen = load_generator(source, tok.model, allow)
        overrides = sampler_overrides(args)
        try:
            sampler_settings(gen.model, **overrides)
        except ValueError as err:
            raise SetupError(f"sampler settings: {err}") from None
        random["generator"] = gen.random
        report["generator"] = gen.label
        if not args.reference_batch:
            raise SetupError("gfid needs --reference-batch (e.g. VIRTUAL_imagenet256_labeled.npz)")
        inc = inception("float32")
        if not Path(args.reference_batch).is_file() and args.make_reference_batch:
            reals = dataset(args.split, args.num_images)
            make_reference_batch(reals, len(reals), inc, args.reference_batch, num_workers=args.num_workers,
                                 **common)
        elif not Path(args.reference_batch).is_file():
            raise SetupError(f"reference batch {args.reference_batch} does not exist: download "
                                 "VIRTUAL_imagenet256_labeled.npz (guided-diffusion's evaluation suite) for ImageNet "
                                 "256, or add --make-reference-batch to build one from --data")
        path = sample_to_npz(gen.model, tok.model, args.samples_dir, model=tok.label, checkpoint=gen.label,
                             num_samples=args.num_samples, seed=args.seed, info=info,
                             teacher=teacher.model if teacher else None, batch_size=args.sample_batch_size,
                             png=args.png, metadata={"weights_random": dict(random)}, **overrides)
        out = evaluate_generation(path, args.reference_batch, inception=inc, fid_method=args.fid_method, **common)
        report["samples"] = {"path": str(path), **out.pop("samples")}
        result.update(out)
        report["timings_s"]["generation"] = time.perf_counter() - t0
    if "probe" in groups:
        t0 = time.perf_counter()
        train, val = dataset("train", args.probe_num_train), dataset(args.split, args.num_images)
        result.update(linear_probe(tok.model, train, val, num_train=len(train), num_val=len(val), info=info,
                                   epochs=args.probe_epochs, batch_size=args.batch_size, num_workers=args.num_workers))
        report.setdefault("data", val.describe())
        report["timings_s"]["probe"] = time.perf_counter() - t0
    report.update(weights_random=random, random=any(random.values()), device=str(info.device),
                  world_size=info.world_size, settings=vars(args))
    return report


def print_report(report: dict) -> None:
    print(f"titok-bench eval: {report['tokenizer']}" + (f" + {report['generator']}" if "generator" in report else "")
          + f" ({report['device']} x {report['world_size']})")
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
    info = D.setup(args.device)
    try:
        report = evaluate(args, info)
    except (weights.MissingWeightsError, DatasetError, SetupError, models.CheckpointMismatchError,
            FileNotFoundError) as err:
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
