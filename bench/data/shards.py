"""Webdataset tar shards as ImageNet data: shard patterns, reading samples, the plan's check, decoding, and the
log of skipped samples. Training streams them (bench/data/shard_stream.py), evaluation reads them by random
access (bench/data/shard_dataset.py), both through each shard's index (bench/data/shard_index.py).

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
"""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator

from PIL import Image

from bench.data.base import DatasetError, log_skipped, read_skipped
from bench.data.folder import to_rgb

log = logging.getLogger(__name__)

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff", "gif")
LABEL_MEMBER = "cls"
URL_TIMEOUT_S = 60

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
def open_shard(shard: str):
    if is_url(shard):
        try:
            return urllib.request.urlopen(shard, timeout=URL_TIMEOUT_S)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise DatasetError(f"shard {shard} cannot be read: {e}") from None
    return open(shard, "rb")


def open_tar(shard: str, fileobj):
    """Local files are read seekable (skipping a member seeks over its data); URLs as a stream."""
    return tarfile.open(fileobj=fileobj, mode="r|*" if is_url(shard) else "r:*")


def split_member_name(name: str) -> tuple[str, str] | None:
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
    with open_shard(shard) as f, open_tar(shard, f) as tar:
        key, members, index = None, {}, -1
        for info in tar:
            if not info.isfile():
                continue
            parts = split_member_name(info.name)
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


def parse_label(raw: bytes) -> int | str:
    """The class index of a `cls` member, or a string saying why it is not one."""
    try:
        return int(raw.decode().strip())
    except (UnicodeDecodeError, ValueError):
        return f"bad cls member {raw[:20]!r}"


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
    label = parse_label(members[LABEL_MEMBER])
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
    label = parse_label(members[LABEL_MEMBER])
    if isinstance(label, str):
        raise ValueError(label)
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise ValueError(f"class label {label} outside [0, {num_classes})")
    with Image.open(io.BytesIO(members[ext])) as im:
        im.load()
        return to_rgb(im), label


# ---- skipped samples -------------------------------------------------------------------------------------------
class SkipLog:
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
