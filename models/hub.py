"""The weights cache and hub fetches.

Released weights live in one cache, $TITOK_BENCH_WEIGHTS (default ~/.cache/titok-bench/weights), a hub repo in
`hub/<owner>--<name>/` (bench.weights' registry uses the same folders). `hub_fetch` downloads a repo there at the
commit models/hub_revisions.json pins and writes its source record (models.source_records); TITOK_BENCH_OFFLINE=1
or HF_HUB_OFFLINE=1 forbid it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .source_records import is_commit, write_source_record
from .variants import pinned_revision

ENV_CACHE = "TITOK_BENCH_WEIGHTS"
ENV_OFFLINE = "TITOK_BENCH_OFFLINE"
HUB_FILES = ("config.json", "model.safetensors")  # what the hub-style folder of a released repo holds
HUB_TIMEOUT_S = 15.0  # connect and each read: an offline machine fails in seconds


def weights_cache_dir() -> Path:
    """$TITOK_BENCH_WEIGHTS or ~/.cache/titok-bench/weights (read at every call: tests may change it)."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "titok-bench" / "weights"


def hub_folder_name(repo: str) -> str:
    """A hub repo's folder in the weights cache: hub/<owner>--<name>."""
    return f"hub/{repo.replace('/', '--')}"


def hub_folder(repo: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a hub repo's files live in the weights cache (or under `cache_dir`)."""
    return Path(cache_dir or weights_cache_dir()).expanduser() / hub_folder_name(repo)


def offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "") not in ("", "0")


def hub_commit(repo: str, revision: str | None = None) -> str:
    """The commit a revision of a hub repo (None: main) resolves to; a full commit sha needs no network."""
    if is_commit(revision):
        return revision
    import huggingface_hub

    return huggingface_hub.model_info(repo, revision=revision, timeout=HUB_TIMEOUT_S).sha


def hub_fetch(
    repo: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    files: tuple[str, ...] = HUB_FILES,
) -> Path:
    """Download `files` of a hub repo at `revision` (None: the pinned one, else main) into its hub folder and write
    its source record; FileNotFoundError saying what to do when it cannot (offline, unknown repo, no access)."""
    revision = revision or pinned_revision(repo)
    folder = hub_folder(repo, cache_dir)
    at = f" at revision {revision}" if revision else ""
    todo = (
        f"Download {' and '.join(files)} of https://huggingface.co/{repo}{at} into {folder}/ (or any folder, and "
        "pass the folder to models.from_pretrained)"
    )
    if offline():
        raise FileNotFoundError(f"not fetching {repo!r}: offline mode ({ENV_OFFLINE} is set). {todo}")
    try:
        import huggingface_hub

        commit = hub_commit(repo, revision)
        for f in files:
            huggingface_hub.hf_hub_download(repo, f, revision=commit, local_dir=folder, etag_timeout=HUB_TIMEOUT_S)
    except Exception as err:  # offline, unknown repo, auth: all end the same way for the user
        raise FileNotFoundError(
            f"could not fetch {repo!r}{at} from the Hugging Face hub ({type(err).__name__}: {err}). Offline? {todo}"
        ) from None
    write_source_record(
        folder,
        list(files),
        repo=repo,
        revision=revision,
        commit=commit,
        url=f"https://huggingface.co/{repo}/tree/{commit}",
    )
    return folder
