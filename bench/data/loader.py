"""Data loaders for training (exact resume, DDP) and evaluation (each image exactly once over all ranks).

Training order. Step s of a run is batch `s % B` of epoch `s // B`, where B is the number of global batches
per epoch. Epoch e's global order is a permutation of the dataset that is a pure function of (seed, e);
global batch k is the slice [k*G, (k+1)*G) of it (G = batch_size * world_size), and rank r takes the
sub-slice [r*b, (r+1)*b) of that. A loader built with `start_step` simply leaves out the steps before it,
so a resumed run sees exactly the batches of the uninterrupted one, whatever the number of workers.
Datasets with `takes_sample_seeds` get keys `(index, sample_seed)` whose seed is also a function of
(seed, epoch, position), so random crops and flips are reproduced as well.

Evaluation order. Rank r takes the contiguous slice `eval_shard(n, r, world_size)` of the dataset in its
natural order: no padding and no duplicates, and concatenating the ranks' outputs in rank order gives the
dataset order. Ranks may get one batch more or fewer: gather after the loop, not per batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch) so that nearby pairs give unrelated streams
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class StepBatchSampler(Sampler[list]):
    """The batches of one rank for the current epoch (`set_epoch`), leaving out steps before `start_step`.

    With `drop_last` the incomplete last global batch of an epoch is dropped; without it, that batch is
    filled up with the epoch's first images (as DistributedSampler pads), so every rank gets as many
    full batches as the others and DDP never waits on a missing step."""

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
        start_step: int = 0,
        sample_seeds: bool = False,
    ):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or start_step < 0 or seed < 0:
            raise ValueError(
                f"bad loader settings: batch_size={batch_size}, rank={rank}, "
                f"world_size={world_size}, start_step={start_step}, seed={seed}"
            )
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.drop_last = rank, world_size, shuffle, drop_last
        self.start_step, self.sample_seeds = start_step, sample_seeds
        global_batch = batch_size * world_size
        self.batches_per_epoch = num_samples // global_batch if drop_last else -(-num_samples // global_batch)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"a dataset of {num_samples} images holds no full global batch of {global_batch} "
                f"(batch_size {batch_size} x world_size {world_size}); use more images, a smaller "
                f"batch, or drop_last=False"
            )
        self.epoch = start_step // self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def first_batch(self) -> int:
        """Index within the current epoch of its first batch not before `start_step`."""
        return min(max(self.start_step - self.epoch * self.batches_per_epoch, 0), self.batches_per_epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.first_batch()

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Global order of `epoch` (padded to whole global batches) and the per-position sample seeds."""
        n, total = self.num_samples, self.batches_per_epoch * self.batch_size * self.world_size
        generator = _epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        if total > n:
            order = order[torch.arange(total) % n]
        seeds = torch.randint(2**62, (total,), generator=generator) if self.sample_seeds else None
        return order[:total], seeds

    def __iter__(self) -> Iterator[list]:
        order, seeds = self.epoch_order(self.epoch)
        b, g = self.batch_size, self.batch_size * self.world_size
        for k in range(self.first_batch(), self.batches_per_epoch):
            lo = k * g + self.rank * b
            idx = order[lo : lo + b].tolist()
            yield list(zip(idx, seeds[lo : lo + b].tolist())) if seeds is not None else idx


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    start_step: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Training loader of one rank: iterating it yields the batches of the epoch that holds `start_step`,
    from that step on. `infinite_batches` walks on through the later epochs."""
    sampler = StepBatchSampler(
        len(dataset),
        batch_size=batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
        drop_last=drop_last,
        start_step=start_step,
        sample_seeds=getattr(dataset, "takes_sample_seeds", False),
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def infinite_batches(source: Dataset | DataLoader, **loader_kwargs) -> Iterator[tuple[int, object]]:
    """(step, batch) for step = start_step, start_step + 1, ... across epochs. `source` is a loader from
    `make_loader`, or a dataset with `make_loader`'s keyword arguments: `infinite_batches(ds, batch_size=32,
    seed=0, start_step=1000, rank=rank, world_size=world_size, num_workers=4)`."""
    if isinstance(source, DataLoader):
        if loader_kwargs:
            raise TypeError("infinite_batches takes loader settings only with a dataset, not with a loader")
        loader = source
    else:
        loader = make_loader(source, **loader_kwargs)
    sampler = loader.batch_sampler
    if not isinstance(sampler, StepBatchSampler):
        raise TypeError("infinite_batches needs a loader made by make_loader")
    epoch = sampler.start_step // sampler.batches_per_epoch
    while True:
        sampler.set_epoch(epoch)
        step = epoch * sampler.batches_per_epoch + sampler.first_batch()
        for batch in loader:
            yield step, batch
            step += 1
        epoch += 1


def eval_shard(num_samples: int, rank: int, world_size: int) -> range:
    """The contiguous, order-keeping slice of rank `rank`; the shards of all ranks partition range(n)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad rank {rank} for world_size {world_size}")
    return range(num_samples * rank // world_size, num_samples * (rank + 1) // world_size)


def make_eval_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Evaluation loader of one rank: its `eval_shard` in dataset order, the last batch possibly short. A sample
    that is None (a file that cannot be read) is left out of its batch; a batch left empty is None."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=eval_shard(len(dataset), rank, world_size),
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=_collate_present,
    )


def _collate_present(samples: list):
    present = [s for s in samples if s is not None]
    return default_collate(present) if present else None
