"""The project's own checkpoint format: one safetensors file whose metadata holds the model config and a sha256 of
the tensor data, so a file rebuilds its model alone and a damaged one is refused: `save(model, path)` /
`load(path)`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .atomic_files import atomic_path
from .generators import GeneratorConfig
from .maskgit_vqgan import VQGANConfig
from .sampling import SamplerSettings
from .state_dicts import CheckpointError, load_state_into, read_state_file
from .titok import TiTokConfig
from .variants import Variant, build_from_config, resolve

FORMAT = "titok-bench/1"
DIGEST_KEY = "tensors_sha256"  # in our checkpoints' metadata (files written before it have none and still load)
_CONFIG_TYPES = {"TiTokConfig": TiTokConfig, "GeneratorConfig": GeneratorConfig, "VQGANConfig": VQGANConfig}
_NESTED = {"vqgan": VQGANConfig, "sampler": SamplerSettings}


def config_to_json(config) -> str:
    return json.dumps({"type": type(config).__name__, "fields": dataclasses.asdict(config)})


def config_from_json(text: str):
    data = json.loads(text)
    cls = _CONFIG_TYPES[data["type"]]
    fields = dict(data["fields"])
    for name, nested in _NESTED.items():
        if name in fields:
            fields[name] = nested(**fields[name])
    if "vqgan" in fields:
        fields["vqgan"] = dataclasses.replace(fields["vqgan"], channel_mult=tuple(fields["vqgan"].channel_mult))
    if cls is VQGANConfig:
        fields["channel_mult"] = tuple(fields["channel_mult"])
    return cls(**fields)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors in name order: name, dtype, shape and raw bytes (what bit rot changes)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Save weights + config (+ optional string metadata) as one self-describing safetensors file."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "kind": model.kind,
        "config": config_to_json(model.config),
        DIGEST_KEY: tensor_digest(tensors),
        **(metadata or {}),
    }
    with atomic_path(path) as tmp:
        # bytes through our own file: save_file would write a temporary file of its own (.tmpXXXXXX, mode 0600)
        # beside it, which a killed writer leaves behind under a name nobody can attribute
        tmp.write_bytes(safetensors_bytes(tensors, metadata=meta))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as err:  # zero bytes, a truncated header or data, not safetensors at all
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {err}): it is "
            "truncated or corrupt (an interrupted copy or download?); copy it again"
        ) from None


def _describe(v: Variant) -> str:
    return f"a {v.kind} with " + ", ".join(f"{k} {val}" for k, val in v.sizes().items())


def load(path: str | os.PathLike, variant: str | None = None) -> nn.Module:
    """Rebuild a model from one of the project's own checkpoint files; `variant`: it must hold that architecture."""
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a titok-bench checkpoint (no '{FORMAT}' metadata); "
            "for released weights use models.from_pretrained"
        )
    config = config_from_json(meta["config"])
    if variant is not None:
        held, want = Variant(path.name, meta.get("kind", "?"), config), resolve(variant)
        if (held.kind, held.sizes()) != (want.kind, want.sizes()):
            raise CheckpointError(
                f"{path} holds {_describe(held)}, not the requested {variant} ({_describe(want)}): "
                "pass the checkpoint of that variant, or no variant to load what the file holds"
            )
    state = read_state_file(path)
    if DIGEST_KEY in meta and tensor_digest(state) != meta[DIGEST_KEY]:
        raise CheckpointError(
            f"{path}: the tensor data does not match the sha256 written with it (bit rot or a "
            "damaged copy): restore the file from a good copy, or retrain it"
        )
    with torch.device("meta"):
        model = build_from_config(config)
    return load_state_into(model, state, f"its own config ({type(config).__name__})").eval()
