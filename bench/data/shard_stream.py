"""The training source of webdataset shards (bench/data/shards.py): this rank's batches from any step on, in an
exact, resumable order.

Training order (ShardStream), exact and a pure function of (seed, world_size, num_workers, batch_size):
- streams: S = world_size x max(num_workers, 1); stream i = rank * W + w (w: the data-loader worker).
- epoch e of stream i: the shards permuted by (seed, e), every S-th from position i (shards[perm[i::S]]); when
  the shard count is not a multiple of S, some streams hold one shard more per epoch: each stream walks its own
  epochs on (streams never wait for each other), so over a run every sample is seen about equally often, not
  exactly once per global epoch. Fewer shards than streams is an error.
- inside a shard: blocks of SHUFFLE_BLOCK consecutive samples, each read whole and emitted in a permutation
  seeded by (seed, e, shard, block); random crop + flip seeds by (seed, e, shard, position in the shard).
  Shards are assumed to be written in shuffled order (as ImageNet shards are): a shard sorted by class gives
  batches of few classes.
- a skipped sample's position takes the next usable sample of the stream, so every position yields one sample.
- rank batch k is batch k // W of stream rank * W + k % W (the data loader's round-robin over its workers).
Resume at step s starts each stream at its own batch, found from the per-shard sample counts (the shard index,
bench/data/shard_index.py): whole shards before it are not opened, and inside its shard only the headers before
its block are read. A resumed run gets the same batches as the uninterrupted one, as long as world_size,
num_workers, the per-rank batch and the shards are unchanged (changing one of these changes the order from then
on, not the data).

    stream = ShardStream(shard_list("/data/imagenet-train-{000000..001281}.tar"), image_size=256, train=True,
                         batch_size=32, seed=0, start_step=1000, rank=0, world_size=8, num_workers=4)
    for images, labels in make_stream_loader(stream): ...
"""

from __future__ import annotations

import itertools
import tarfile
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate

from bench.data.base import DatasetError
from bench.data.folder import preprocess, preprocessing
from bench.data.shard_index import shard_index
from bench.data.shards import SkipLog, decode, iter_raw

SHUFFLE_BLOCK = 1000  # samples read whole and shuffled together (an ImageNet shard holds ~1000)


def _seed(*parts: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(p) for p in parts])


class ShardStream(IterableDataset):
    """This rank's training batches (images [b, 3, S, S], labels [b]) from step `start_step` on, forever; see the
    module docstring for the order. Iterate it through `make_stream_loader` (its workers are the streams)."""

    def __init__(
        self,
        shards: list[str],
        *,
        image_size: int,
        train: bool,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        num_classes: int | None = None,
        skipped_log: str | None = None,
        block: int = SHUFFLE_BLOCK,
    ):
        if (
            batch_size < 1
            or world_size < 1
            or not 0 <= rank < world_size
            or start_step < 0
            or seed < 0
            or num_workers < 0
            or block < 1
        ):
            raise ValueError(
                f"bad stream settings: batch_size={batch_size}, rank={rank}, world_size={world_size}, "
                f"start_step={start_step}, seed={seed}, num_workers={num_workers}, block={block}"
            )
        self.shards, self.image_size, self.train, self.batch_size = list(shards), image_size, train, batch_size
        self.seed, self.start_step, self.rank, self.world_size = seed, start_step, rank, world_size
        self.num_workers, self.num_classes, self.block = num_workers, num_classes, block
        self.workers = max(num_workers, 1)
        self.num_streams = world_size * self.workers
        if len(self.shards) < self.num_streams:
            raise DatasetError(
                f"{len(self.shards)} shards cannot feed {world_size} ranks x {self.workers} data-loader "
                f"workers = {self.num_streams} streams (each reads whole shards): use at least "
                f"{self.num_streams} shards, or fewer workers (data.num_workers)"
            )
        self._skips = SkipLog(skipped_log, "train")

    def __len__(self):  # an endless stream
        raise TypeError("a ShardStream is endless")

    def count(self, shard: int) -> int:
        return len(shard_index(self.shards[shard])["samples"])

    def shard_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(_seed(self.seed, epoch, 0x5A4D)).permutation(len(self.shards))

    def stream_shards(self, stream: int, epoch: int) -> list[int]:
        return [int(i) for i in self.shard_order(epoch)[stream :: self.num_streams]]

    def positions(self, stream: int, start: int) -> Iterator[tuple[int, int, int]]:
        """(epoch, shard, sample within the shard) of the stream's positions start, start + 1, ..."""
        pos, epoch, empty = 0, 0, 0
        while True:
            order = self.stream_shards(stream, epoch)
            total = sum(self.count(i) for i in order)
            empty = empty + 1 if total == 0 else 0
            if empty and all(self.count(i) == 0 for i in range(len(self.shards))):
                raise DatasetError(f"none of the {len(self.shards)} shards holds a sample")
            if pos + total <= start:
                pos, epoch = pos + total, epoch + 1
                continue
            for shard in order:
                n = self.count(shard)
                if pos + n > start:
                    first = max(start - pos, 0)
                    nb = -(-n // self.block)
                    for b in range(first // self.block, nb):
                        lo, hi = b * self.block, min((b + 1) * self.block, n)
                        perm = np.random.default_rng(_seed(self.seed, epoch, shard, b)).permutation(hi - lo) + lo
                        for j in range(first - lo if b == first // self.block else 0, hi - lo):
                            yield epoch, shard, int(perm[j])
                pos += n
            epoch += 1

    def raw_samples(self, stream: int, start: int) -> Iterator[tuple[int, int, int, str, dict | None, str | None]]:
        """(epoch, shard, index, key, members or None, error) in stream order; a block's samples are read whole."""
        cur = None  # (epoch, shard, block) -> {index: (key, members)}
        cached: dict[int, tuple[str, dict]] = {}
        for epoch, shard, index in self.positions(stream, start):
            b = index // self.block
            if cur != (epoch, shard, b):
                cur, cached, error = (epoch, shard, b), {}, None
                lo = b * self.block
                try:
                    for j, sample in enumerate(iter_raw(self.shards[shard], skip=lo, wanted=self.block)):
                        cached[lo + j] = sample
                except (tarfile.TarError, OSError, EOFError, DatasetError) as e:
                    error = f"shard unreadable here ({type(e).__name__}: {e})"
            if index in cached:
                key, members = cached[index]
                yield epoch, shard, index, key, members, None
            else:
                yield epoch, shard, index, f"#{index}", None, error or "sample missing from the shard"

    def samples(self, stream: int, start: int) -> Iterator[tuple[torch.Tensor, int]]:
        """(image, label) of each position; a skipped position gets the next usable sample (its own crop)."""
        pending: list[int] = []  # crop seeds of skipped positions waiting for the next usable sample
        run = 0
        for epoch, shard, index, key, members, error in self.raw_samples(stream, start):
            sample_seed = int(_seed(self.seed, epoch, shard, index, 0xC0).generate_state(2, np.uint64)[0] >> 2)
            image = None
            if members is not None:
                try:
                    image, label = decode(members, self.num_classes)
                except Exception as e:  # any decoder failure (Pillow raises many types) means "skip this sample"
                    error = f"{type(e).__name__}: {e}"
            if image is None:
                self._skips.record(f"{self.shards[shard]}#{key}", error)
                pending.append(sample_seed)
                run += 1
                if run > sum(self.count(i) for i in range(len(self.shards))):
                    raise DatasetError(f"no usable sample in the {len(self.shards)} shards; see skipped()")
                continue
            run = 0
            for s in [*pending, sample_seed]:
                yield preprocess(image, self.image_size, self.train, s), label
            pending = []

    def batches(self, stream: int, first_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        b = self.batch_size
        it = self.samples(stream, first_batch * b)
        while True:
            yield default_collate(list(itertools.islice(it, b)))

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, count = (0, 1) if info is None else (info.id, info.num_workers)
        if count != self.workers:
            raise DatasetError(
                f"the stream was made for {self.workers} data-loader workers but runs in {count}: "
                "build its loader with make_stream_loader"
            )
        # the loader takes worker 0's batch first, then 1's, ...: worker w serves rank batches start + w, + W, ...
        logical = (self.start_step + worker) % self.workers
        return self.batches(self.rank * self.workers + logical, (self.start_step + worker) // self.workers)

    def skipped(self) -> list[tuple[str, str]]:
        """('<shard>#<key>', error) of every sample skipped so far (this process, and all that share skipped_log)."""
        return self._skips.merged(set(self.shards))

    def describe(self) -> dict:
        return {
            "name": "imagenet_wds",
            "root": self.shards[0],
            "split": "train",
            "num_shards": len(self.shards),
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "seed": self.seed,
            "shuffle_block": self.block,
            "preprocessing": preprocessing(self.image_size, self.train),
        }


def make_stream_loader(stream: ShardStream, pin_memory: bool = False) -> DataLoader:
    return DataLoader(stream, batch_size=None, num_workers=stream.num_workers, pin_memory=pin_memory)
