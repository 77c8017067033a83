"""Webdataset tar shards as ImageNet data: a streaming training source and an indexed evaluation dataset.

    from bench.data.shards import ShardStream, ShardIndexDataset, shard_list
    stream = ShardStream(shard_list("/data/imagenet-train-{000000..001281}.tar"), image_size=256, train=True,
                         batch_size=32, seed=0, start_step=1000, rank=0, world_size=8, num_workers=4)
    for images, labels in make_stream_loader(stream): ...

Shard format (webdataset's convention, as the official TiTok data): a tar file whose members are grouped into
samples by key, the member path up to the first '.' of its file name (`n01440764_10026.jpg` and
`n01440764_10026.cls` are one sample with key `n01440764_10026`; a sample's members are consecutive). A sample
holds one image (`jpg`, `jpeg`, `png`, `webp`, ...: the first present, case-insensitive) and its class index as
decimal text (`cls`). A pattern is a path or an http(s)/file URL with brace ranges and lists
(`imagenet-train-{000000..001281}.tar`, `{a,b}`); several patterns may be joined with '::'.

Preprocessing and decoding are the folder source's (bench/data/folder.py: `load_rgb` conversion to RGB,
`preprocess`). A sample that cannot be used (an undecodable image, no image member, no or a bad `cls`, a label
outside num_classes, a shard that breaks off) is skipped and counted: logged once, appended to `skipped_log`
like the folder source, and listed by `skipped()`.

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
Resume at step s starts each stream at its own batch, found from the per-shard sample counts (an index made
once per shard by reading the tar headers, cached in SHARD_INDEX_ENV or ~/.cache/titok-bench/shard-index):
whole shards before it are not opened, and inside its shard only the headers before its block are read. A
resumed run gets the same batches as the uninterrupted one, as long as world_size, num_workers, the per-rank
batch and the shards are unchanged (changing one of these changes the order from then on, not the data).

Evaluation (ShardIndexDataset): the index gives each sample's image member offset, so the shards are read by
random access (local files only), in shard order; `num_images` picks a class-balanced subset as the folder
source does.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import re
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from bench.data.base import DatasetError, first_readable, log_skipped, read_skipped
from bench.data.folder import _balanced_subset, preprocess, to_rgb

log = logging.getLogger(__name__)

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff", "gif")
LABEL_MEMBER = "cls"
SHUFFLE_BLOCK = 1000  # samples read whole and shuffled together (an ImageNet shard holds ~1000)
SHARD_INDEX_ENV = "TITOK_BENCH_SHARD_INDEX"
URL_TIMEOUT_S = 60
INDEX_VERSION = 1

_BRACE = re.compile(r"\{([^{}]*)\}")


# ---- patterns ---------------------------------------------------------------------------------------------------
def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> a-000.tar, a-001.tar, a-002.tar (zero padding kept); `{x,y}` -> x, y; nested
    left to right, in order."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    r = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if r:
        lo, hi = r.group(1), r.group(2)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        a, b = int(lo), int(hi)
        step = 1 if b >= a else -1
        options = [str(v).zfill(width) for v in range(a, b + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        raise DatasetError(
            f"shard pattern {pattern!r}: brace group {{{body}}} is neither a range {{000..099}} nor a list {{a,b}}"
        )
    return [out for option in options for out in expand_braces(head + option + tail)]


def is_url(shard: str) -> bool:
    return shard.startswith(("http://", "https://", "file://"))


def shard_list(pattern: str | None, what: str = "data.train_shards") -> list[str]:
    """The shards of `pattern` ('::'-joined patterns, brace-expanded); local ones must exist (one-line errors)."""
    if not pattern or not str(pattern).strip():
        raise DatasetError(
            f"{what} is not set: give webdataset tar shards, e.g. {what}=/data/imagenet-train-{{000000..001281}}.tar"
        )
    shards = [s for part in str(pattern).split("::") if part.strip() for s in expand_braces(part.strip())]
    local = [s for s in shards if not is_url(s)]
    missing = [s for s in local if not os.path.isfile(s)]
    if missing and len(missing) == len(shards):
        raise DatasetError(
            f"{what}={pattern}: no shard matches ({len(shards)} paths expanded, none exists, e.g. {missing[0]})"
        )
    if missing:
        raise DatasetError(
            f"{what}={pattern}: {len(missing)} of {len(shards)} shards do not exist, e.g. "
            f"{missing[0]}; fix the range or restore them"
        )
    if len(set(shards)) != len(shards):
        raise DatasetError(f"{what}={pattern}: names a shard more than once")
    return shards


# ---- reading tar shards -------------------------------------------------------------------------------------
def _open(shard: str):
    if is_url(shard):
        try:
            return urllib.request.urlopen(shard, timeout=URL_TIMEOUT_S)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise DatasetError(f"shard {shard} cannot be read: {e}") from None
    return open(shard, "rb")


def _tar(shard: str, fileobj):
    """Local files are read seekable (skipping a member seeks over its data); URLs as a stream."""
    return tarfile.open(fileobj=fileobj, mode="r|*" if is_url(shard) else "r:*")


def _split_name(name: str) -> tuple[str, str] | None:
    """Member path -> (sample key, member suffix lowercased); None for a member that belongs to no sample."""
    folder, base = os.path.split(name)
    if base.startswith(".") or "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def iter_raw(shard: str, skip: int = 0, wanted: int | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member suffix: bytes}) of each sample of `shard` in tar order, from sample `skip` on (the members
    before it are passed over unread), at most `wanted` samples. A shard that breaks off ends early: the error
    is raised after its last whole sample."""
    with _open(shard) as f, _tar(shard, f) as tar:
        key, members, index = None, {}, -1
        for info in tar:
            if not info.isfile():
                continue
            parts = _split_name(info.name)
            if parts is None:
                continue
            if parts[0] != key:
                if key is not None and index >= skip:
                    yield key, members
                    if wanted is not None and index - skip + 1 >= wanted:
                        return
                key, members, index = parts[0], {}, index + 1
            if index >= skip:
                members[parts[1]] = tar.extractfile(info).read()
        if key is not None and index >= skip:
            yield key, members


def _scan(shard: str) -> dict:
    """A shard's index: per sample [key, image suffix or None, image data offset or -1, image size, label or
    None]; reading stops at a broken member (`error`)."""
    samples, error = [], None
    try:
        with _open(shard) as f, _tar(shard, f) as tar:
            key, entry = None, None
            for info in tar:
                parts = _split_name(info.name) if info.isfile() else None
                if parts is None:
                    continue
                if parts[0] != key:
                    key, entry = parts[0], [parts[0], None, -1, 0, None]
                    samples.append(entry)
                ext = parts[1]
                if ext in IMAGE_MEMBERS and entry[1] is None:
                    entry[1:4] = [ext, info.offset_data, info.size]
                elif ext == LABEL_MEMBER:
                    entry[4] = _parse_label(tar.extractfile(info).read())
    except (tarfile.TarError, OSError, EOFError) as e:
        error = f"{type(e).__name__}: {e}"
        log.warning("shard %s breaks off after %d samples (%s)", shard, len(samples), error)
    return {"version": INDEX_VERSION, "shard": shard, "samples": samples, "error": error}


def _parse_label(raw: bytes) -> int | str:
    """The class index of a `cls` member, or a string saying why it is not one."""
    try:
        return int(raw.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return f"bad cls member {raw[:20]!r}"


def _index_dir() -> str:
    return os.environ.get(SHARD_INDEX_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "titok-bench", "shard-index"
    )


def _index_file(shard: str) -> str:
    if is_url(shard):
        ident = shard
    else:
        st = os.stat(shard)
        ident = f"{os.path.abspath(shard)}|{st.st_size}|{st.st_mtime_ns}"
    return os.path.join(_index_dir(), hashlib.sha256(ident.encode()).hexdigest()[:24] + ".json")


_INDEX: dict[str, dict] = {}


def shard_index(shard: str) -> dict:
    """The shard's index (see `_scan`), from this process's memory, the index cache, or a scan (then cached)."""
    if shard in _INDEX:
        return _INDEX[shard]
    path = _index_file(shard)
    index = None
    try:
        with open(path) as f:
            index = json.load(f)
        if index.get("version") != INDEX_VERSION or index.get("shard") != shard:
            index = None
    except (OSError, json.JSONDecodeError):
        index = None
    if index is None:
        index = _scan(shard)
        if index["error"] is None or not is_url(shard):  # a network failure is not cached
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    json.dump(index, f)
                os.replace(tmp, path)
            except OSError as e:  # a read-only cache only costs a re-scan
                log.warning("cannot cache the shard index in %s (%s)", path, e)
    _INDEX[shard] = index
    return index


def check_shards(pattern: str | None, what: str, num_classes: int | None = None, local_only: bool = False) -> int:
    """The plan's check: the pattern expands to existing shards and the first shard's first sample has an image
    and a class label. Returns the number of shards; raises a one-line DatasetError."""
    shards = shard_list(pattern, what)
    if local_only and any(is_url(s) for s in shards):
        raise DatasetError(
            f"{what}={pattern}: evaluation reads shards by random access, so they must be local "
            "files (copy them to a filesystem)"
        )
    first = shards[0]
    try:
        key, members = next(iter_raw(first, wanted=1), (None, None))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"{what}: shard {first} is not a readable tar file ({type(e).__name__}: {e})") from None
    if key is None:
        raise DatasetError(f"{what}: shard {first} holds no samples (members named <key>.<suffix>)")
    if not any(ext in members for ext in IMAGE_MEMBERS):
        raise DatasetError(
            f"{what}: sample {key!r} of shard {first} has no image member ({', '.join(IMAGE_MEMBERS)}"
            f"), only {sorted(members)}"
        )
    if LABEL_MEMBER not in members:
        raise DatasetError(
            f"{what}: sample {key!r} of shard {first} has no class label (a .{LABEL_MEMBER} member "
            f"holding the class index), only {sorted(members)}; class-conditional training needs one"
        )
    label = _parse_label(members[LABEL_MEMBER])
    if isinstance(label, str) or (num_classes is not None and not 0 <= label < num_classes):
        raise DatasetError(
            f"{what}: sample {key!r} of shard {first}: class label {members[LABEL_MEMBER][:20]!r} is "
            f"not an integer in [0, {num_classes})"
        )
    return len(shards)


# ---- decoding -----------------------------------------------------------------------------------------------------
def decode(members: dict[str, bytes], num_classes: int | None) -> tuple[Image.Image, int]:
    """(RGB image, label) of a sample; raises ValueError saying why it cannot be used."""
    ext = next((e for e in IMAGE_MEMBERS if e in members), None)
    if ext is None:
        raise ValueError(f"no image member ({', '.join(IMAGE_MEMBERS)}), only {sorted(members)}")
    if LABEL_MEMBER not in members:
        raise ValueError(f"no class label (.{LABEL_MEMBER} member), only {sorted(members)}")
    label = _parse_label(members[LABEL_MEMBER])
    if isinstance(label, str):
        raise ValueError(label)
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise ValueError(f"class label {label} outside [0, {num_classes})")
    with Image.open(io.BytesIO(members[ext])) as im:
        im.load()
        return to_rgb(im), label


class _SkipLog:
    """Skipped samples of this process (and, with a folder, of every process), as the folder source keeps them."""

    def __init__(self, folder: str | None, split: str):
        self.folder, self.split, self.bad = folder, split, {}
        if folder is not None:
            os.makedirs(folder, exist_ok=True)

    def record(self, where: str, error: str) -> None:
        if where in self.bad:
            return
        self.bad[where] = error
        log.warning("skipping unusable sample %s (%s)", where, error)
        if self.folder is not None:
            log_skipped(self.folder, f"skipped-wds-{self.split}", where, error)

    def merged(self, prefixes: set[str]) -> list[tuple[str, str]]:
        found = read_skipped(self.folder, f"skipped-wds-{self.split}", lambda path: path.split("#", 1)[0] in prefixes)
        found.update(self.bad)
        return sorted(found.items())


def _seed(*parts: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(p) for p in parts])


# ---- training: the stream -------------------------------------------------------------------------------------
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
        self._skips = _SkipLog(skipped_log, "train")

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
        s = self.image_size
        crop = f"random crop {s} + horizontal flip" if self.train else f"center crop {s}"
        return {
            "name": "imagenet_wds",
            "root": self.shards[0],
            "split": "train",
            "num_shards": len(self.shards),
            "num_classes": self.num_classes,
            "image_size": s,
            "seed": self.seed,
            "shuffle_block": self.block,
            "preprocessing": f"resize shorter side to {s} (bicubic, antialias), {crop}, [0,1] float",
        }


def make_stream_loader(stream: ShardStream, pin_memory: bool = False) -> DataLoader:
    return DataLoader(stream, batch_size=None, num_workers=stream.num_workers, pin_memory=pin_memory)


# ---- evaluation: random access by the index --------------------------------------------------------------------
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
        self._skips = _SkipLog(skipped_log, split)
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
            entries = _balanced_subset(entries, max_images, seed)
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
        s = self.image_size
        crop = f"random crop {s} + horizontal flip" if self.train else f"center crop {s}"
        return {
            "name": "imagenet_wds",
            "root": self.shards[0],
            "split": self.split,
            "len": len(self),
            "num_shards": len(self.shards),
            "num_classes": self.num_classes,
            "image_size": s,
            "max_images": self.max_images,
            "seed": self.seed,
            "preprocessing": f"resize shorter side to {s} (bicubic, antialias), {crop}, [0,1] float",
        }
