"""`verify`: a present file matches its source record (and the pinned commit) and passes its entry's check: a full
sha256, a sha256 prefix, its tensor names and shapes, or that it is readable."""

from __future__ import annotations

from pathlib import Path

from models import source_records, state_dicts

from .entries import entry
from .resolution import locate


def sha256_of(path: Path) -> str:
    """sha256 of a file (once per process for each version of it)."""
    return source_records.file_sha256(path)


def expected_shapes(kind: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes a structurally valid file of this kind holds."""
    import torch

    if kind == "lpips":
        return {f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    if kind == "inception":
        # torch-fidelity's InceptionV3 uses torchvision's module names for every parameter and buffer (566
        # tensors, BatchNorm counters included); only the classifier has 1008 classes and there is no aux head.
        import torchvision

        with torch.device("meta"):
            net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
        return {k: tuple(v.shape) for k, v in net.state_dict().items()}
    raise ValueError(f"unknown structure kind {kind!r}")


def _load_tensors(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_slice(k).get_shape() for k in f.keys()}
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def verify(name: str) -> bool:
    """True when the file is present, matches its source record if it has one (and the pinned commit) and passes
    its check (see hash_kind / hash_note); False otherwise."""
    e = entry(name)
    p = locate(name)
    if p is None:
        return False
    try:
        source_records.check_source(p, e.revision)  # not the file that was fetched, or not the pinned commit
    except state_dicts.CheckpointError:
        return False
    if e.hash_kind == "sha256":
        return sha256_of(p) == e.sha256
    if e.hash_kind == "sha256-prefix":
        return sha256_of(p).startswith(e.sha256)
    try:
        if e.structure:
            want = expected_shapes(e.structure)
            got = _load_tensors(p)
            return {k: tuple(v) for k, v in got.items() if k in want} == want
        files = [p / f for f in e.hub_files] if e.is_folder else [p]
        for f in files:
            if f.suffix == ".json":
                import json

                json.loads(f.read_text())
            elif f.suffix == ".npz":
                import numpy as np

                with np.load(f) as z:
                    if not {"mu", "sigma"} <= set(z.files):
                        return False
            else:
                _load_tensors(f)
        return True
    except Exception:  # unreadable, truncated, not a state_dict: all mean "not the right file"
        return False
