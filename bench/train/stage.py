"""What every training stage does around the loop: set up (distributed, seeded), feed it this rank's batches
(`batches_for`, `loader_batches`), and finish by writing the final weights to `out_dir/model.safetensors` (a
self-describing checkpoint) and returning a `StageResult`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import models
from bench.core import dist as D
from bench.data import ShardStream, build_dataset, infinite_batches, make_loader, make_stream_loader, shard_list

from .loop import TrainResult
from .recipes import DataConfig

MODEL_FILE = "model.safetensors"

Log = Callable[[dict, int], None] | None


@dataclass
class StageResult:
    checkpoint: str
    steps: int
    wall_s: float
    final_logs: dict[str, float]
    random_weights: dict[str, bool] = field(default_factory=dict)  # pretrained network -> was a stand-in
    resumed_from: int = 0
    precision: str = "fp32"  # the precision that ran (TrainResult.precision)
    lost_s: float = 0.0  # of wall_s: work done again after a preemption or kill (TrainResult.lost_s)

    @property
    def any_random(self) -> bool:
        return any(self.random_weights.values())


def start_stage(device: str, seed: int) -> D.DistInfo:
    """Distributed set-up and a seeded RNG, so that model initialisation is reproducible (and equal on all
    ranks); the loop reseeds per rank for the training randomness."""
    info = D.setup(device)
    torch.manual_seed(seed)
    return info


def local_batch(batch_size: int, info: D.DistInfo) -> int:
    """This rank's share of a global batch."""
    if batch_size % info.world_size:
        raise ValueError(f"global batch {batch_size} does not divide across {info.world_size} ranks")
    return batch_size // info.world_size


def loader_batches(dataset, batch_size: int, seed: int, info: D.DistInfo, num_workers: int = 0):
    """A map-style dataset's batch source: a function of the start step, yielding (step, this rank's share of the
    global batch on the device), in the loader's resumable order (bench.data.loader)."""
    local = local_batch(batch_size, info)

    def batches(start_step: int):
        loader = make_loader(
            dataset,
            batch_size=local,
            seed=seed,
            rank=info.rank,
            world_size=info.world_size,
            num_workers=num_workers,
            start_step=start_step,
            pin_memory=info.device.type == "cuda",
        )
        for step, items in infinite_batches(loader):
            yield step, tuple(x.to(info.device, non_blocking=True) for x in items)

    return batches


def dataset_of(data: DataConfig, split: str, train: bool = False, skipped_log: str | None = None):
    """`split` of the images `data` describes (build_dataset; `train`: random crops and flips, else centre crops)."""
    return build_dataset(
        data.name,
        split=split,
        image_size=data.image_size,
        train=train,
        root=data.root,
        num_images=data.num_images,
        num_classes=data.num_classes,
        seed=data.seed,
        skipped_log=skipped_log,
        shards=data.train_shards if split == "train" else data.val_shards,
    )


def batches_for(
    data: DataConfig, batch_size: int, seed: int, info: D.DistInfo, train_split: bool = True, train_augment: bool = True
):
    """The loop's batch source: a function of the start step, yielding this rank's (images, labels).
    `train_augment` False gives centre crops (the generator's input) instead of random crops + flips."""
    if data.name == "imagenet_wds":  # streamed shards: their own exact-resume order (bench/data/shard_stream.py)
        shards = shard_list(
            data.train_shards if train_split else data.val_shards,
            "data.train_shards" if train_split else "data.val_shards",
        )
        local = local_batch(batch_size, info)

        def shard_batches(start_step: int):
            stream = ShardStream(
                shards,
                image_size=data.image_size,
                train=train_split and train_augment,
                batch_size=local,
                seed=seed,
                start_step=start_step,
                rank=info.rank,
                world_size=info.world_size,
                num_workers=data.num_workers,
                num_classes=data.num_classes,
            )
            for images, labels in make_stream_loader(stream, pin_memory=info.device.type == "cuda"):
                yield images.to(info.device, non_blocking=True), labels.to(info.device, non_blocking=True)

        return shard_batches
    dataset = dataset_of(data, "train" if train_split else "val", train=train_split and train_augment)
    stepped = loader_batches(dataset, batch_size, seed, info, data.num_workers)
    return lambda start_step: (batch for _, batch in stepped(start_step))


def finish(
    result: TrainResult,
    out_dir: str | os.PathLike,
    info: D.DistInfo,
    random_weights: dict[str, bool],
    metadata: dict | None = None,
) -> StageResult:
    path = Path(out_dir) / MODEL_FILE
    if info.is_main:
        meta = {
            "steps": str(result.steps),
            **{f"random.{k}": str(v).lower() for k, v in random_weights.items()},
            **(metadata or {}),
        }
        models.save(result.model, path, metadata=meta)
    D.barrier()
    return StageResult(
        str(path),
        result.steps,
        result.wall_s,
        result.final_logs,
        random_weights,
        result.resumed_from,
        result.precision,
        result.lost_s,
    )
