"""The data layer: datasets by name, and loaders for training (exact resume, DDP) and evaluation.

    from bench.data import build_dataset, make_loader, infinite_batches, make_eval_loader
    ds = build_dataset("synthetic", split="train", image_size=64, train=True, num_images=10_000)
    for step, (images, labels) in infinite_batches(make_loader(ds, batch_size=32, seed=0, start_step=0)):
        ...

Datasets return (float32 image [3, S, S] in [0, 1], int label) and carry `num_classes` and `describe()`.
- "synthetic": procedurally generated class-conditional images, offline (bench/data/synthetic.py);
- "imagenet": an ImageFolder-style root `<root>/{train,val}/<class>/<image>` (bench/data/folder.py);
- "imagenet_wds": webdataset tar shards (bench/data/shards.py): `build_dataset` gives the indexed evaluation
  dataset (bench/data/shard_dataset.py), and training streams them with `ShardStream` (bench/data/shard_stream.py;
  bench.train.stage.batches_for picks it).
"""

from __future__ import annotations

from bench.data.base import DatasetError
from bench.data.folder import ImageFolderDataset
from bench.data.loader import StepBatchSampler, eval_shard, infinite_batches, make_eval_loader, make_loader
from bench.data.shard_dataset import ShardIndexDataset
from bench.data.shard_stream import ShardStream, make_stream_loader
from bench.data.shards import shard_list
from bench.data.synthetic import SyntheticShapes

DATASETS = ("synthetic", "imagenet", "imagenet_wds")

__all__ = [
    "DATASETS",
    "DatasetError",
    "ImageFolderDataset",
    "ShardIndexDataset",
    "ShardStream",
    "StepBatchSampler",
    "SyntheticShapes",
    "build_dataset",
    "eval_shard",
    "infinite_batches",
    "make_eval_loader",
    "make_loader",
    "make_stream_loader",
    "shard_list",
]


def build_dataset(
    name: str,
    *,
    split: str,
    image_size: int,
    train: bool,
    root: str | None = None,
    num_images: int | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    skipped_log: str | None = None,
    shards: str | None = None,
) -> SyntheticShapes | ImageFolderDataset | ShardIndexDataset:
    """A dataset by name.

    synthetic: `num_images` images (default 50k train / 10k val) of `num_classes` classes (default 10, at
        most 1000) rendered at `image_size` (32..512) from `seed`; `train`, `root` and `skipped_log` have
        nothing to act on (no augmentation, no files).
    imagenet: the images of `<root>/<split>/`, preprocessed for training (`train=True`: random crop and
        flip) or evaluation (center crop); `num_images` keeps a class-balanced subset chosen with `seed`,
        `num_classes` keeps the first classes in sorted order, `skipped_log` is the folder where
        unreadable files are reported (pass one when num_workers > 0; read it with `dataset.skipped()`).
    imagenet_wds: the samples of the local tar shards of `shards` (a brace pattern) in shard order, read by
        random access (evaluation; training streams the shards with ShardStream), preprocessed as imagenet;
        `num_images` keeps a class-balanced subset, `num_classes` is the label space (other labels are skipped).
    """
    if name == "synthetic":
        return SyntheticShapes(
            split=split,
            image_size=image_size,
            num_images=num_images,
            num_classes=10 if num_classes is None else num_classes,
            seed=seed,
        )
    if name == "imagenet":
        if root is None:
            raise DatasetError(
                "the imagenet dataset needs a root: a folder with train/ and val/ subfolders "
                "of class folders (pass root=...)"
            )
        return ImageFolderDataset(
            root,
            split=split,
            image_size=image_size,
            train=train,
            max_images=num_images,
            num_classes=num_classes,
            seed=seed,
            skipped_log=skipped_log,
        )
    if name == "imagenet_wds":
        what = "data.train_shards" if split == "train" else "data.val_shards"
        return ShardIndexDataset(
            shard_list(shards, what),
            split=split,
            image_size=image_size,
            train=train,
            max_images=num_images,
            num_classes=num_classes,
            seed=seed,
            skipped_log=skipped_log,
        )
    raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
