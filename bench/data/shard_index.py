"""Each shard's index: per sample its key, image member (suffix, data offset, size) and label, made once by
reading the tar headers and cached in $TITOK_BENCH_SHARD_INDEX (default ~/.cache/titok-bench/shard-index), so
that a resumed stream skips whole shards unopened and evaluation reads images by random access."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile

from bench.data.shards import IMAGE_MEMBERS, LABEL_MEMBER, is_url, open_shard, open_tar, parse_label, split_member_name

log = logging.getLogger(__name__)

SHARD_INDEX_ENV = "TITOK_BENCH_SHARD_INDEX"
INDEX_VERSION = 1


def _scan(shard: str) -> dict:
    """A shard's index: per sample [key, image suffix or None, image data offset or -1, image size, label or
    None]; reading stops at a broken member (`error`)."""
    samples, error = [], None
    try:
        with open_shard(shard) as f, open_tar(shard, f) as tar:
            key, entry = None, None
            for info in tar:
                parts = split_member_name(info.name) if info.isfile() else None
                if parts is None:
                    continue
                if parts[0] != key:
                    key, entry = parts[0], [parts[0], None, -1, 0, None]
                    samples.append(entry)
                ext = parts[1]
                if ext in IMAGE_MEMBERS and entry[1] is None:
                    entry[1:4] = [ext, info.offset_data, info.size]
                elif ext == LABEL_MEMBER:
                    entry[4] = parse_label(tar.extractfile(info).read())
    except (tarfile.TarError, OSError, EOFError) as e:
        error = f"{type(e).__name__}: {e}"
        log.warning("shard %s breaks off after %d samples (%s)", shard, len(samples), error)
    return {"version": INDEX_VERSION, "shard": shard, "samples": samples, "error": error}


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
