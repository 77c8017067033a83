"""`from_pretrained`, the zoo's front door: a variant name, a hub repo id, a hub-style folder, an official raw
state_dict file or one of the project's own checkpoints -> a model in eval mode.

Released weights are read from the weights cache and fetched there first, at the pinned commit, when missing
(models.hub); a folder or file with a source record is checked against it (models.source_records).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from .checkpoint_format import FORMAT, load, read_metadata
from .hub import HUB_FILES, hub_fetch, hub_folder
from .official_layout import from_official, infer_config
from .source_records import check_source, is_commit, read_source_record
from .state_dicts import CheckpointError, load_state_into, read_state_file
from .variants import VARIANTS, build_from_config, pinned_revision, resolve


# ---- official checkpoints: a hub-style folder or a raw state_dict file ---------------------------------------
def load_official_state(
    state: dict[str, torch.Tensor], official_config: dict | None = None, variant: str | None = None
) -> nn.Module:
    """Build the model an official state_dict describes (or `variant`, checked against it) and load it."""
    ours = from_official(state)
    if variant is not None:
        config = resolve(variant).config
        what = f"variant {variant!r}"
    else:
        config = infer_config({k: tuple(v.shape) for k, v in ours.items()}, official_config)
        what = f"the architecture inferred from it ({type(config).__name__})"
    with torch.device("meta"):
        model = build_from_config(config)
    load_state_into(model, ours, what)
    return model.eval()


def read_config(path: Path) -> dict | None:
    """An official config.json (None when there is none)."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{path} is not valid JSON ({err}): repair it, download it again, or delete it to "
            "infer the architecture from the weights"
        ) from None


def read_official_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    config = read_config(folder / "config.json")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return read_state_file(folder / name), config
    raise FileNotFoundError(f"{folder} has no model.safetensors or pytorch_model.bin")


# ---- the front door ----------------------------------------------------------------------------------------
_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json")


def looks_like_path(text: str) -> bool:
    """Whether a string that names nothing here was meant as a local path rather than a hub repo id ("owner/name")
    or a variant name: it starts with '.', '~' or a separator, has more than one separator or a checkpoint file's
    suffix, or its first folder exists here."""
    parts = re.split(r"[/\\]", text)
    return (
        text.startswith((".", "~", "/", "\\"))
        or len(parts) > 2
        or Path(text).suffix in _FILE_SUFFIXES
        or (len(parts) > 1 and Path(parts[0]).is_dir())
    )


def _hub_download(repo: str, cache_dir: str | None) -> Path:
    """The repo's folder in the weights cache, its files checked against their source record; fetched (hub_fetch)
    when a file is missing or the record holds another commit than the pinned one."""
    folder = hub_folder(repo, cache_dir)
    pinned = pinned_revision(repo)
    if all((folder / f).is_file() for f in HUB_FILES):
        record = read_source_record(folder)
        if not (record and is_commit(pinned) and record.get("commit") != pinned):
            check_source(folder)
            return folder
    return hub_fetch(repo, pinned, cache_dir)


def from_pretrained(
    name_or_path: str | os.PathLike, variant: str | None = None, cache_dir: str | os.PathLike | None = None
) -> nn.Module:
    """Load released or own weights, in eval mode.

    name_or_path: a registered variant name with released weights or a hub repo id ("owner/name"): read from the
    weights cache (hub_folder), fetched there first, at the pinned commit, when missing (the zoo's explicit front
    door; the benchmark's stages never fetch: they resolve files through bench.weights); a hub-style folder
    (config.json + model.safetensors), an official raw state_dict file (.bin/.pt/.pth/.safetensors), or one of the
    project's own checkpoint files. A folder or file with a source record is checked against it (check_source).
    variant: check the weights against this registered architecture instead of inferring it.
    cache_dir: the weights cache to use instead of $TITOK_BENCH_WEIGHTS.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        check_source(path)
    if path.is_dir():
        state, config = read_official_folder(path)
        return load_official_state(state, config, variant)
    if path.is_file():
        if path.suffix == ".safetensors" and read_metadata(path).get("format") == FORMAT:
            return load(path, variant)
        return load_official_state(read_state_file(path), read_config(path.parent / "config.json"), variant)
    if text in VARIANTS:
        v = VARIANTS[text]
        if not v.hub_repo:
            raise ValueError(
                f"{text} has no released weights on the hub"
                + (f" (the raw file {v.official_file} can be loaded by path)" if v.official_file else "")
                + f"; build it untrained with models.build({text!r})"
            )
        state, config = read_official_folder(_hub_download(v.hub_repo, cache_dir))
        return load_official_state(state, config, variant or text)
    if looks_like_path(text):
        raise FileNotFoundError(f"no such file or folder: {path.absolute()}")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        state, config = read_official_folder(_hub_download(text, cache_dir))
        return load_official_state(state, config, variant)
    raise FileNotFoundError(
        f"{text!r} is neither a file, a folder, a registered variant with released weights "
        "nor a hub repo id (owner/name)"
    )
