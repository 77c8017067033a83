"""`fetch`: download an entry into the cache (hub files at the pinned revision, other files from their URL) and
write its source record. Short timeouts: an offline machine fails in seconds."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

from bench.core.io import atomic_file
from models import hub, source_records

from .checks import verify
from .entries import entry
from .resolution import MissingWeightsError, cache_dir, locate, path_of


def _download(url: str, dest: Path, timeout: float) -> None:
    from tqdm import tqdm

    # The timeout bounds connect and every read: an offline machine fails in seconds instead of hanging. A
    # half-downloaded file never sits under the real name.
    with urllib.request.urlopen(url, timeout=timeout) as r, atomic_file(dest) as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not sys.stderr.isatty()) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))


def fetch(name: str, timeout: float = hub.HUB_TIMEOUT_S) -> Path:
    """Download the entry into the cache (no-op when present and verified), hub files at the pinned revision, and
    write its source record; MissingWeightsError when offline."""
    e = entry(name)
    if locate(name) is not None and verify(name):
        return locate(name)
    if hub.offline():
        raise MissingWeightsError.for_entry(name, f"offline mode: {hub.ENV_OFFLINE} is set")
    if e.is_folder:
        try:
            hub.hub_fetch(e.hub_repo, e.revision, cache_dir(), e.hub_files)
        except FileNotFoundError as err:
            raise MissingWeightsError.for_entry(name, str(err)) from None
    else:
        try:
            commit = hub.hub_commit(e.hub_repo, e.revision) if e.hub_repo else None
        except Exception as err:  # offline, unknown repo, auth
            reason = f"could not resolve {e.hub_repo}@{e.revision or 'main'}: {type(err).__name__}: {err}; offline?"
            raise MissingWeightsError.for_entry(name, reason) from None
        for rel, url in e.downloads(commit):
            try:
                _download(url, cache_dir() / rel, timeout)
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                reason = f"download of {url} failed: {type(err).__name__}: {err}; offline?"
                raise MissingWeightsError.for_entry(name, reason) from None
        source = dict(repo=e.hub_repo, revision=e.revision, commit=commit) if e.hub_repo else {}
        source_records.write_source_record(path_of(name), url=url, **source)
    if not verify(name):
        raise RuntimeError(
            f"downloaded {name!r} to {path_of(name)} but it fails verification "
            f"({e.hash_kind}: {e.hash_note}); delete it and retry, or check the source {e.url}"
        )
    return path_of(name)
