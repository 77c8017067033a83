"""Does the rFID feature network rank image quality? FID of images against their own degraded copies.

    python -m bench.sensitivity --images 256 --image-size 32 --json sensitivity.json   # the tiny preset's rFID

The CPU smoke preset (sweeps/preset/tiny.yaml) scores reconstructions with a seeded random-init stand-in Inception
(bench.eval.inception, allow_random_weights), because the released weights cannot be downloaded. Its rFID is only
worth reading if that network still orders quality; this measures it. A useful feature network gives an FID of
the originals against their blurred (or noised) copies that rises monotonically with the strength: Spearman's rho
of strength against FID is 1.

Same images, network and distance as the preset's rFID: the preset composed through the sweep config (its val
split, seed and image size; eval.rfid_inception_dtype, eval.fid_method, allow_random_weights), the Inception from
bench.stages.base.inception (what real_stats and eval_recon use), the originals' statistics from
real_feature_stats, every degraded set through to_uint8 and the same network, the distance fid_from_stats; PSNR as
evaluate_reconstruction's (the uint8 pair, back in [0, 1], mean over images; inf for an exact copy).
Degradations, on the [0, 1] images: blur, a Gaussian of `sigma` px (kernel 2 ceil(3 sigma) + 1, reflected edges);
noise, + std N(0, 1), one seeded draw for every std (so the sets are nested), clamped to [0, 1]. Strength 0 is the
image itself (FID ~0). Every number is tagged random (weights_random) when the Inception is the stand-in.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench.core.dist import DistInfo
from bench.core.io import atomic_write_json
from bench.eval.metrics import FeatureStats, fid_from_stats, psnr, spearman
from bench.eval.reconstruction import POOL_DIM, real_feature_stats
from bench.eval.run import eval_batches, to_uint8
from bench.stages import base
from bench.train.recipes import DataConfig

STRENGTHS = {
    "blur": (0.5, 1.0, 1.5, 2.0, 3.0),  # Gaussian sigma, px
    "noise": (0.02, 0.05, 0.1, 0.2, 0.3),
}  # additive Gaussian std, on [0, 1] images
NOISE_SEED = 0


@dataclass(frozen=True)
class RfidSettings:
    """A preset's rFID settings; also the `spec` bench.stages.base.inception and feature_tags read."""

    data: DataConfig
    inception_dtype: str
    fid_method: str
    allow_random_weights: bool
    device: str = "cpu"
    split: str = "val"


def preset_settings(preset: str = "tiny") -> RfidSettings:
    """The rFID settings of sweeps/preset/<preset>.yaml, composed as the sweep composes them."""
    from hydra import compose, initialize_config_dir

    from bench.plan import data_config
    from bench.sweep import SWEEPS

    with initialize_config_dir(str(SWEEPS), version_base=None):
        cfg = compose("sweep", overrides=[f"preset={preset}"])
    p = cfg.preset
    return RfidSettings(
        data=data_config(cfg, "val_images"),
        inception_dtype=p.eval.rfid_inception_dtype,
        fid_method=p.eval.fid_method,
        allow_random_weights=bool(p.allow_random_weights),
        device=p.device,
    )


def degrade(images: torch.Tensor, kind: str, strength: float, seed: int = NOISE_SEED) -> torch.Tensor:
    """[B, 3, H, W] images in [0, 1] blurred (kind "blur", sigma px) or noised ("noise", std); 0: unchanged."""
    if kind not in STRENGTHS:
        raise ValueError(f"degradation {kind!r}: choose one of {', '.join(STRENGTHS)}")
    if strength < 0:
        raise ValueError(f"{kind} strength {strength} < 0")
    if strength == 0:
        return images
    if kind == "blur":
        from torchvision.transforms.v2.functional import gaussian_blur

        k = 2 * math.ceil(3 * strength) + 1
        return gaussian_blur(images, kernel_size=[k, k], sigma=[strength, strength])
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images + strength * noise.to(images.device, images.dtype)).clamp(0, 1)


@torch.no_grad()
def sensitivity(
    settings: RfidSettings,
    num_images: int,
    strengths: dict = STRENGTHS,
    *,
    batch_size: int = 64,
    seed: int = NOISE_SEED,
) -> dict:
    """FID and PSNR of the first `num_images` evaluation images against each degraded copy of them (the module
    doc): {"rows": [{degradation, strength, psnr, fid}], "spearman": {degradation: rho}, "weights_random",
    "random", "tags" (the rFID's titok.rfid_* feature tags), what was measured, and wall_s}."""
    t0 = time.perf_counter()
    info = DistInfo(device=torch.device(settings.device))
    inception = base.inception(settings, base.Context(Path("."), info))
    dataset = base.eval_dataset(settings.data, settings.split, num_images)
    real = real_feature_stats(dataset, num_images, inception=inception, batch_size=batch_size, info=info)
    images = torch.cat([x for x, _ in eval_batches(dataset, num_images, batch_size, info, desc="images")])
    real_u8 = to_uint8(images)
    rows = []
    for kind, values in strengths.items():
        for strength in values:
            fake_u8 = to_uint8(degrade(images, kind, strength, seed))
            fake = FeatureStats(POOL_DIM, info.device).update(inception(fake_u8).pool)
            rows.append(
                {
                    "degradation": kind,
                    "strength": float(strength),
                    "psnr": psnr(real_u8.double() / 255, fake_u8.double() / 255).mean().item(),
                    "fid": fid_from_stats(real, fake, method=settings.fid_method),
                }
            )
    rho = {
        kind: spearman(
            [r["strength"] for r in rows if r["degradation"] == kind],
            [r["fid"] for r in rows if r["degradation"] == kind],
        )
        for kind in strengths
    }
    random = {"inception": inception.random}
    reference = f"the same {real.count} images, undegraded"
    return {
        "rows": rows,
        "spearman": rho,
        "num_images": real.count,
        "data": dataset.describe(),
        "inception_dtype": settings.inception_dtype,
        "fid_method": settings.fid_method,
        "weights_random": random,
        "random": any(random.values()),
        "tags": base.feature_tags("rfid", settings, inception, reference),
        "wall_s": time.perf_counter() - t0,
    }


def print_result(out: dict) -> None:
    d = out["data"]
    print(
        f"rFID feature-network sensitivity: {out['num_images']} {d['name']} {d['split']} images, "
        f"{d['image_size']} px, Inception {out['inception_dtype']}, FID {out['fid_method']}, "
        f"{out['wall_s']:.0f} s"
    )
    if out["random"]:
        standins = ", ".join(k for k, v in out["weights_random"].items() if v)
        print(f"  RANDOM STAND-IN WEIGHTS ({standins}): smoke-test numbers, never comparable with the paper")
    print(f"  {'degradation':<12} {'strength':>8} {'PSNR dB':>9} {'FID':>12}")
    for r in out["rows"]:
        print(f"  {r['degradation']:<12} {r['strength']:>8g} {r['psnr']:>9.2f} {r['fid']:>12.4f}")
    print("  Spearman rho (strength vs FID): " + ", ".join(f"{k} {v:.3f}" for k, v in out["spearman"].items()))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.sensitivity", description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256, help="validation images (the first N)")
    ap.add_argument("--image-size", type=int, help="default: the preset's")
    ap.add_argument("--preset", default="tiny", help="whose rFID settings (sweeps/preset/<name>.yaml)")
    ap.add_argument("--inception-dtype", choices=["float32", "float64"], help="default: the preset's")
    ap.add_argument("--blur", type=_floats, default=STRENGTHS["blur"], help="comma-separated sigmas, px")
    ap.add_argument("--noise", type=_floats, default=STRENGTHS["noise"], help="comma-separated stds")
    ap.add_argument("--seed", type=int, default=NOISE_SEED, help="of the noise")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", help="default: the preset's")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", help="write the result here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    s = preset_settings(args.preset)
    s = replace(
        s,
        data=replace(s.data, image_size=args.image_size or s.data.image_size),
        inception_dtype=args.inception_dtype or s.inception_dtype,
        device=args.device or s.device,
    )
    out = sensitivity(
        s, args.images, {"blur": args.blur, "noise": args.noise}, batch_size=args.batch_size, seed=args.seed
    )
    print_result(out)
    if args.json:
        atomic_write_json(args.json, out, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
