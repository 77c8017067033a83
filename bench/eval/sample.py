"""Class-conditional sampling from a MaskGIT generator to ADM-format .npz files (and optional PNG folders).

    path = sample_to_npz(gen, tok, "samples/", model="TiTok-L-32", checkpoint="MaskGIT-ViT-TiTok-L-32",
                         num_samples=50_000, seed=42, info=info)
    # samples/samples_TiTok-L-32_MaskGIT-ViT-TiTok-L-32_steps8_cfg4.5-linear_temp9.5_seed42_n50000.npz
    python -m bench.eval TiTok-L-32 --metrics gfid --reference-batch VIRTUAL_imagenet256_labeled.npz  # samples, scores

Rules (each recorded in the file's metadata):
- labels: sample i has class i % num_classes; 50,000 samples of 1,000 classes are 50 per class, and every run of
  num_classes consecutive samples holds each class once (the reference's `range(1000) x 50`);
- randomness: sample i draws all its sampler noise from its own torch.Generator on the sampling device, seeded
  with sample_seed(seed, i) (numpy SeedSequence([seed, i]) -> 64 bits). A sample therefore does not depend on
  the batch size, the number of ranks or the other samples (numbers still differ between devices: CUDA and
  CPU generators give different streams). Samples are generated in batches, the sampler drawing each row's
  noise from that row's generator (cond and uncond in one batched forward);
- sampler settings: the generator's own (`config.sampler`, the variant's released settings) with any overrides;
- inference path: the reference procedure (fp32, cond and uncond in one batched forward, torch.no_grad), or a
  `pipeline` handed in from above (bench.speed.paths.InferencePipeline: the eval_gen stage passes `auto` under the
  exact guard, which admits exact fp32 paths only, so the samples equal the reference sampler's); the metadata's
  `inference` names the path that ran;
- pixels: decoded images clamped to [0, 1], x255 and truncated to uint8, NHWC (the reference's sampling script);
- ranks: rank r generates the contiguous slice bench.data.eval_shard(n, r, world) and writes a part file next
  to the output; the main rank joins the parts in order (the folder must be shared between ranks, as the
  output folder of a SLURM job is); PNGs `{index:06d}.png` are written by each rank directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

import models
from bench.core.dist import DistInfo, barrier
from bench.data import eval_shard
from bench.eval import npz
from bench.eval.npz import save_samples_npz
from bench.eval.run import SINGLE_PROCESS, decode_tokens, progress, to_uint8

SEED_RULE = (
    "sample i: class i % num_classes; its own torch.Generator on the sampling device seeded with "
    "SeedSequence([seed, i]).generate_state(2, uint32) as one 64-bit integer, from which all of "
    "that sample's sampler noise is drawn (batched rows keep their own streams); "
    "uint8 = trunc(255 * clamp(x, 0, 1))"
)


def class_balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """int64 [num_samples]: sample i has class i % num_classes (balanced to within one sample per class)."""
    if num_samples < 1 or num_classes < 1:
        raise ValueError(f"need positive num_samples and num_classes, got {num_samples} and {num_classes}")
    return torch.arange(num_samples) % num_classes


def sample_seed(seed: int, index: int) -> int:
    """The 64-bit seed of sample `index`: nearby (seed, index) pairs give unrelated streams."""
    hi, lo = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return int(hi) << 32 | int(lo)


def sampler_settings(generator: models.MaskGITGenerator, **overrides) -> models.SamplerSettings:
    """The generator's released settings with `overrides` (unknown names are an error)."""
    return generator.config.sampler.updated(**overrides)


def _fmt(x: float) -> str:
    return f"{x:g}"


def sample_name(model: str, checkpoint: str, settings: models.SamplerSettings, seed: int, num_samples: int) -> str:
    """`samples_<model>_<ckpt>_steps8_cfg4.5-linear_temp9.5_seed42_n50000.npz`; settings that differ from the
    sampler's defaults beyond these (power-cosine exponent, annealing off) are appended, so names never collide."""

    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9.@+-]+", "-", text).strip("-") or "none"

    guidance = f"cfg{_fmt(settings.guidance_scale)}-{settings.guidance_decay}"
    default = models.SamplerSettings()
    if settings.guidance_decay == "power-cosine" and settings.guidance_scale_pow != default.guidance_scale_pow:
        guidance += f"-pow{_fmt(settings.guidance_scale_pow)}"
    parts = [
        "samples",
        clean(model),
        clean(checkpoint),
        f"steps{settings.num_steps}",
        guidance,
        f"temp{_fmt(settings.randomize_temperature)}",
    ]
    if not settings.softmax_temperature_annealing:
        parts.append("noanneal")
    parts += [f"seed{seed}", f"n{num_samples}"]
    return "_".join(parts) + ".npz"


@dataclass
class SampleShard:
    """This rank's samples: indices (a contiguous range), uint8 images [n, H, W, 3], labels [n]."""

    indices: range
    images: np.ndarray
    labels: np.ndarray


REFERENCE_PATH = "reference (fp32, batched cond/uncond forward, torch.no_grad)"


class SamplingPath(Protocol):
    """What sampling needs of an inference path (bench.speed.paths.InferencePipeline is one)."""

    device: torch.device

    def sample(self, labels: torch.Tensor, settings: models.SamplerSettings, rng) -> torch.Tensor: ...

    def decode(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> str: ...


@torch.no_grad()
def generate_tokens(
    generator: models.MaskGITGenerator,
    labels: torch.Tensor,
    indices: range,
    seed: int,
    pipeline: SamplingPath | None = None,
    **sampler_overrides,
) -> torch.Tensor:
    """Token ids [len(indices), K] of samples `indices` with class `labels[i]` each (labels covers all samples),
    in one batch, each row drawing its noise from its own generator seeded with sample_seed(seed, i); through
    `pipeline` when given, else the reference procedure."""
    dev = next(generator.parameters()).device
    noise = [torch.Generator(device=dev).manual_seed(sample_seed(seed, i)) for i in indices]
    rows = labels[indices.start : indices.stop].to(dev)
    if pipeline is not None:
        return pipeline.sample(rows, sampler_settings(generator, **sampler_overrides), noise)
    return generator.generate(rows, generator=noise, batch_guidance=True, **sampler_overrides)


@torch.no_grad()
def generate_samples(
    generator: models.MaskGITGenerator,
    tokenizer: models.TiTok,
    *,
    num_samples: int,
    seed: int = 42,
    info: DistInfo = SINGLE_PROCESS,
    teacher: models.MaskGITVQGAN | None = None,
    num_classes: int | None = None,
    batch_size: int = 32,
    pipeline: SamplingPath | None = None,
    **sampler_overrides,
) -> SampleShard:
    """This rank's share of `num_samples` class-balanced samples (see the module docstring for the rules).
    `num_classes` defaults to the generator's; models are moved to info.device (a `pipeline` must be built on
    models there already)."""
    sampler_settings(generator, **sampler_overrides)  # unknown or invalid settings fail before any work
    dev = info.device
    generator, tokenizer = generator.to(dev).eval(), tokenizer.to(dev).eval()
    if teacher is not None:
        teacher = teacher.to(dev).eval()
    if pipeline is not None and pipeline.device != dev:
        raise ValueError(f"the sampling pipeline's models are on {pipeline.device}, this rank samples on {dev}")
    num_classes = num_classes or generator.config.num_classes
    if num_classes > generator.config.num_classes:
        raise ValueError(f"num_classes={num_classes}, but the generator knows {generator.config.num_classes} classes")
    labels = class_balanced_labels(num_samples, num_classes)
    shard = eval_shard(num_samples, info.rank, info.world_size)
    images, size = [], tokenizer.config.image_size
    for start in progress(range(shard.start, shard.stop, batch_size), info, "sampling"):
        stop = min(start + batch_size, shard.stop)
        tokens = generate_tokens(generator, labels, range(start, stop), seed, pipeline, **sampler_overrides)
        decoded = pipeline.decode(tokens) if pipeline is not None else decode_tokens(tokenizer, tokens, teacher)
        images.append(to_uint8(decoded, round_first=False).permute(0, 2, 3, 1).cpu().numpy())
    empty = np.zeros((0, size, size, 3), np.uint8)
    return SampleShard(shard, np.concatenate(images) if images else empty, labels[shard.start : shard.stop].numpy())


def write_samples(
    path: str | os.PathLike,
    shard: SampleShard,
    info: DistInfo = SINGLE_PROCESS,
    metadata: dict | None = None,
    png_dir: str | os.PathLike | None = None,
) -> Path:
    """Write every rank's shard as one ADM .npz (arr_0 images, arr_1 labels, metadata) at `path`, joined on the
    main rank from per-rank part files; optionally PNGs `{index:06d}.png` into `png_dir`. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if png_dir is not None:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
        for i, image in zip(shard.indices, shard.images):
            Image.fromarray(image).save(Path(png_dir) / f"{i:06d}.png")
    if not info.distributed:
        save_samples_npz(path, shard.images, shard.labels, metadata)
        return path
    parts = [path.with_name(f".{path.name}.part{r}-of-{info.world_size}.npz") for r in range(info.world_size)]
    np.savez(parts[info.rank], images=shard.images, labels=shard.labels)
    barrier()
    if info.is_main:
        loaded = [np.load(p) for p in parts]
        save_samples_npz(
            path, np.concatenate([f["images"] for f in loaded]), np.concatenate([f["labels"] for f in loaded]), metadata
        )
        for f, p in zip(loaded, parts):
            f.close()
            p.unlink()
    barrier()
    return path


def sample_to_npz(
    generator: models.MaskGITGenerator,
    tokenizer: models.TiTok,
    out_dir: str | os.PathLike,
    *,
    model: str,
    checkpoint: str,
    num_samples: int,
    seed: int = 42,
    info: DistInfo = SINGLE_PROCESS,
    teacher: models.MaskGITVQGAN | None = None,
    num_classes: int | None = None,
    batch_size: int = 32,
    png: bool = False,
    overwrite: bool = False,
    metadata: dict | None = None,
    pipeline: SamplingPath | None = None,
    **sampler_overrides,
) -> Path:
    """Generate, and write `out_dir/sample_name(...)`. The metadata records model, checkpoint, seed, count,
    classes, every sampler setting, the inference path (`pipeline`'s, else the reference procedure) and the rules,
    plus `metadata` (e.g. which weights were stand-ins); an existing file with the same metadata is reused unless
    `overwrite`."""
    settings = sampler_settings(generator, **sampler_overrides)
    path = Path(out_dir) / sample_name(model, checkpoint, settings, seed, num_samples)
    num_classes = num_classes or generator.config.num_classes
    meta = {
        "model": model,
        "checkpoint": checkpoint,
        "seed": seed,
        "num_samples": num_samples,
        "num_classes": num_classes,
        "image_size": tokenizer.config.image_size,
        "sampler": dataclasses.asdict(settings),
        "inference": pipeline.describe() if pipeline is not None else REFERENCE_PATH,
        "rules": SEED_RULE,
        **(metadata or {}),
    }
    if path.is_file() and not overwrite and _stored_metadata(path) == json.loads(json.dumps(meta, default=str)):
        return path  # the same samples; other metadata (e.g. stand-in weights then) is sampled again
    shard = generate_samples(
        generator,
        tokenizer,
        num_samples=num_samples,
        seed=seed,
        info=info,
        teacher=teacher,
        num_classes=num_classes,
        batch_size=batch_size,
        pipeline=pipeline,
        **sampler_overrides,
    )
    return write_samples(path, shard, info, meta, path.with_suffix("") if png else None)


def _stored_metadata(path: Path) -> dict:
    with np.load(path) as f:  # reads the small metadata member only, not the images
        return npz._metadata(f)
