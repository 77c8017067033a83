"""Pretokenization: the tokens of every training image's crops under a frozen tokenizer, written once so that
generator training reads tokens instead of re-encoding every batch (the encoder is most of a generator step:
bench/speed/flops.py). The format and its reader: bench/data/tokens.py.

    pretokenize(PretokenizeConfig(tokenizer="out/stage1/model.safetensors", data=data), "out/pretokenize")

Resumable and distributed: the training set is cut into shards of `shard_size` images, rank r encodes the shards
r, r + world_size, ... that are not done yet, and each finished shard (its arrays, then its record) stays on disk,
so a killed run continues with the shards it had not finished. Rank 0 writes the manifest once every shard is done.
Unreadable images (ImageFolder) are left out and counted, per shard and in the manifest, and reported in the data
layer's skipped log (`skipped/`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import models
from bench.core import dist as D
from bench.core.io import atomic_file, atomic_write_json
from bench.data.tokens import (
    FORMAT,
    MANIFEST,
    TokensError,
    crop_views,
    data_settings,
    num_crops,
    shard_name,
    ten_crop_size,
    token_dtype,
)

from .frozen_tokenizer import load_tokenizer, tokenizer_identity
from .recipes import DataConfig, PretokenizeConfig
from .stage import dataset_of

SKIPPED = "skipped"


def training_images(data: DataConfig, crops: str, skipped_log: str | None = None):
    """The training split the generator reads on the fly (centre crops, no augmentation), at the size its crops
    are cut from."""
    size = data.image_size if crops == "flip" else ten_crop_size(data.image_size)
    return dataset_of(dataclasses.replace(data, image_size=size), "train", skipped_log=skipped_log)


class _Rows(Dataset):
    """(index, image, label) of dataset indices, or (index, None, None) for an unreadable image."""

    def __init__(self, dataset, indices: range):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        sample = self.dataset.read(index) if hasattr(self.dataset, "read") else self.dataset[index]
        return (index, None, None) if sample is None else (index, *sample)


def _collate(rows: list):
    present = [r for r in rows if r[1] is not None]
    images = torch.stack([r[1] for r in present]) if present else None
    return ([r[0] for r in present], images, [r[2] for r in present], [r[0] for r in rows if r[1] is None])


def _encode(tokenizer: models.TiTok, images: torch.Tensor, precision: str) -> torch.Tensor:
    """The tokenizer's ids of `images`: fp32 is `encode` (the tokens the generator computes on the fly); a lower
    precision runs the encoder under autocast (the code lookup stays fp32), for speed at the cost of some tokens."""
    precision = D.runnable_precision(precision, images.device)
    if precision == "fp32":
        return tokenizer.encode(images)
    with torch.autocast(images.device.type, dtype=D.AUTOCAST_DTYPES[precision]):
        return tokenizer.quantize_latents(tokenizer.forward_encoder(images), sample=False).indices


def _shard_record(cfg: PretokenizeConfig, identity: str, lo: int, hi: int) -> dict:
    return {"tokenizer": identity, "data": data_settings(cfg.data), "crops": cfg.crops, "range": [lo, hi]}


def _done_shards(out: Path, records: list[dict]) -> set[int]:
    """The shards whose record is on disk and says what this run would write; a record of another tokenizer, data
    or crop setting is an error (this folder belongs to other tokens), one of other bounds (another shard_size)
    is redone."""
    done = set()
    for i, want in enumerate(records):
        path = out / f"{shard_name(i)}.json"
        if not path.is_file():
            continue
        have = json.loads(path.read_text())
        for key in ("tokenizer", "data", "crops"):
            if have[key] != want[key]:
                raise TokensError(
                    f"{out} holds shards of other tokens ({key}: {have[key]!r}, this run: "
                    f"{want[key]!r}): pretokenize into an empty folder, or remove it"
                )
        if have["range"] == want["range"]:
            done.add(i)
    return done


def _encode_shard(tokenizer, rows: _Rows, cfg: PretokenizeConfig, info: D.DistInfo):
    loader = DataLoader(
        rows,
        batch_size=cfg.batch_size,
        num_workers=cfg.data.num_workers,
        collate_fn=_collate,
        pin_memory=info.device.type == "cuda",
    )
    c = tokenizer.config
    ids, tokens, labels, skipped = [], [], [], []
    for index, images, label, bad in loader:
        skipped += bad
        if images is None:
            continue
        views = crop_views(images.to(info.device, non_blocking=True), cfg.crops, cfg.data.image_size)
        with torch.inference_mode():
            codes = _encode(tokenizer, views.flatten(0, 1), cfg.precision)
        tokens.append(codes.view(len(index), views.shape[1], c.num_latent_tokens).cpu().numpy())
        ids += index
        labels += label
    dtype = token_dtype(c.codebook_size)
    k = num_crops(cfg.crops)
    tokens = np.concatenate(tokens).astype(dtype) if tokens else np.zeros((0, k, c.num_latent_tokens), dtype)
    return tokens, np.asarray(labels, np.int32), np.asarray(ids, np.int64), skipped


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as f:
        np.save(f, array)


def pretokenize(cfg: PretokenizeConfig, out_dir: str | os.PathLike, info: D.DistInfo | None = None) -> dict:
    """Write (or finish) the tokens of `cfg`'s training images into `out_dir`; all ranks call it. Returns the
    manifest."""
    info = info or D.setup(cfg.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).is_file():
        return json.loads((out / MANIFEST).read_text())
    if not cfg.tokenizer:
        raise ValueError("pretokenize needs `tokenizer`: a tokenizer checkpoint or released name")
    if cfg.shard_size < 1 or cfg.batch_size < 1:
        raise ValueError(f"shard_size={cfg.shard_size} and batch_size={cfg.batch_size} must be >= 1")
    num_crops(cfg.crops)
    t0 = time.time()
    tokenizer = load_tokenizer(cfg.tokenizer).to(info.device)
    if not tokenizer.is_vq:
        raise ValueError(f"{cfg.tokenizer} is a VAE tokenizer: it has no discrete tokens to store")
    if tokenizer.config.image_size != cfg.data.image_size:
        raise ValueError(
            f"the tokenizer encodes {tokenizer.config.image_size} px images, data.image_size is {cfg.data.image_size}"
        )
    identity = tokenizer_identity(cfg.tokenizer)
    (out / SKIPPED).mkdir(exist_ok=True)
    dataset = training_images(cfg.data, cfg.crops, str(out / SKIPPED))
    n, size = len(dataset), cfg.shard_size
    bounds = [(lo, min(lo + size, n)) for lo in range(0, n, size)]
    records = [_shard_record(cfg, identity, lo, hi) for lo, hi in bounds]
    done = _done_shards(out, records)
    mine = [i for i in range(info.rank, len(bounds), info.world_size) if i not in done]
    from tqdm import tqdm

    for i in tqdm(mine, desc=f"pretokenize rank {info.rank}", disable=not (info.is_main and os.isatty(2))):
        lo, hi = bounds[i]
        tokens, labels, ids, skipped = _encode_shard(tokenizer, _Rows(dataset, range(lo, hi)), cfg, info)
        base = out / shard_name(i)
        _save_npy(Path(f"{base}.tokens.npy"), tokens)
        _save_npy(Path(f"{base}.labels.npy"), labels)
        _save_npy(Path(f"{base}.index.npy"), ids)
        # the record last: a shard is done when its record exists
        atomic_write_json(
            f"{base}.json", {**records[i], "count": len(ids), "skipped": len(skipped), "skipped_index": skipped}
        )
    D.barrier()
    if info.is_main:
        shards = [json.loads((out / f"{shard_name(i)}.json").read_text()) for i in range(len(bounds))]
        c = tokenizer.config
        manifest = {
            "format": FORMAT,
            "tokenizer": {"source": cfg.tokenizer, "identity": identity},
            "data": data_settings(cfg.data),
            "dataset": _describe(dataset),
            "crops": cfg.crops,
            "num_crops": num_crops(cfg.crops),
            "precision": D.runnable_precision(cfg.precision, info.device),
            "num_tokens": c.num_latent_tokens,
            "codebook_size": c.codebook_size,
            "dtype": token_dtype(c.codebook_size).name,
            "images": n,
            "count": sum(s["count"] for s in shards),
            "skipped": sum(s["skipped"] for s in shards),
            "shards": [
                {"name": shard_name(i), "count": s["count"], "skipped": s["skipped"], "range": s["range"]}
                for i, s in enumerate(shards)
            ],
            "settings": dataclasses.asdict(cfg),
            "wall_s_last_run": time.time() - t0,
        }
        atomic_write_json(out / MANIFEST, manifest)
    D.barrier()
    return json.loads((out / MANIFEST).read_text())


def _describe(dataset) -> dict:
    return {k: v for k, v in dataset.describe().items() if k not in ("root", "skipped_log")}
