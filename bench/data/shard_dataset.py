"""The evaluation source of webdataset shards (bench/data/shards.py): local shards read by random access through
their index (bench/data/shard_index.py), in shard order; `max_images` picks a class-balanced subset as the folder
source does."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bench.data.base import DatasetError, first_readable
from bench.data.folder import balanced_subset, preprocess, preprocessing, to_rgb
from bench.data.shard_index import shard_index
from bench.data.shards import SkipLog, is_url


class ShardIndexDataset(Dataset):
    """The samples of local shards, in shard order, as (float32 [3, S, S] in [0, 1], label): a map-style dataset
    for evaluation (`read(index)` gives None for an unusable sample) with the folder source's interface."""

    takes_sample_seeds = True

    def __init__(
        self,
        shards: list[str],
        *,
        split: str,
        image_size: int,
        train: bool = False,
        max_images: int | None = None,
        num_classes: int | None = None,
        seed: int = 0,
        skipped_log: str | None = None,
    ):
        urls = [s for s in shards if is_url(s)]
        if urls:
            raise DatasetError(f"evaluation reads shards by random access, so they must be local files, not {urls[0]}")
        self.shards, self.split, self.image_size, self.train = list(shards), split, image_size, train
        self.max_images, self.seed = max_images, seed
        self._skips = SkipLog(skipped_log, split)
        entries = []  # (shard, key, image offset, image size, label)
        for i, shard in enumerate(self.shards):
            for key, ext, offset, size, label in shard_index(shard)["samples"]:
                if (
                    ext is None
                    or not isinstance(label, int)
                    or label < 0
                    or (num_classes is not None and label >= num_classes)
                ):
                    why = "no image member" if ext is None else f"unusable class label {label!r}"
                    self._skips.record(f"{shard}#{key}", why)
                    continue
                entries.append(((i, key, offset, size), label))
        if not entries:
            raise DatasetError(
                f"the {len(self.shards)} {split} shards ({self.shards[0]}, ...) hold no sample with an "
                "image and a class label"
            )
        if max_images is not None:
            entries = balanced_subset(entries, max_images, seed)
        self._entries = [e for e, _ in entries]
        self._labels = np.array([label for _, label in entries], dtype=np.int64)
        self.num_classes = num_classes if num_classes is not None else int(self._labels.max()) + 1
        self._files: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def where(self, index: int) -> str:
        shard, key, _, _ = self._entries[index]
        return f"{self.shards[shard]}#{key}"

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        return first_readable(self.read, key, len(self), f"samples of the {self.split} shards")

    def read(self, index: int, sample_seed: int | None = None) -> tuple[torch.Tensor, int] | None:
        where = self.where(index)
        if where in self._skips.bad:
            return None
        shard, _, offset, size = self._entries[index]
        try:
            f = self._files.get(shard)
            if f is None:
                f = self._files[shard] = open(self.shards[shard], "rb")
            f.seek(offset)
            data = f.read(size)
            if len(data) != size:
                raise EOFError(f"image member cut short ({len(data)} of {size} bytes)")
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                image = to_rgb(im)
        except Exception as e:  # any decoder failure means "skip this sample"
            self._skips.record(where, f"{type(e).__name__}: {e}")
            return None
        return preprocess(image, self.image_size, self.train, sample_seed), int(self._labels[index])

    def __getstate__(self):  # open files stay in their process (DataLoader workers open their own)
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def skipped(self) -> list[tuple[str, str]]:
        return self._skips.merged(set(self.shards))

    def describe(self) -> dict:
        return {
            "name": "imagenet_wds",
            "root": self.shards[0],
            "split": self.split,
            "len": len(self),
            "num_shards": len(self.shards),
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "max_images": self.max_images,
            "seed": self.seed,
            "preprocessing": preprocessing(self.image_size, self.train),
        }
