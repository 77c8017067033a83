"""The loop's resume points: checkpoint.pt (weights, optimizer, EMA, RNG states, step, wall time) written atomically
with the sha256 of its content, the one before it kept as checkpoint.previous.pt, and the newest good one found on
resume, a damaged one named on stderr."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from bench.core.io import atomic_file
from models.checkpoint_format import DIGEST_KEY, tensor_digest

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.previous.pt"  # the resume point before it, kept for when checkpoint.pt is damaged


def rng_state() -> dict:
    """This process's torch, numpy, python (and CUDA) RNG states, in a form torch.load(weights_only=True) reads."""
    # numpy's state holds an ndarray, which torch.load(weights_only=True) refuses: store its parts as tensors
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj, path: Path) -> None:
    with atomic_file(path) as f:
        torch.save(obj, f)


def _as_tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every leaf of a resume point as a tensor named by its path (a non-tensor as the bytes of its repr), so that
    the model files' digest (tensor_digest) covers all of it: weights, step, RNG states."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {prefix: torch.frombuffer(bytearray(repr(tree).encode()), dtype=torch.uint8)}
    return {k: v for key, value in items for k, v in _as_tensors(value, f"{prefix}/{key}").items()}


def save_resume_point(state: dict, path: Path, keep_previous: bool) -> None:
    """Write `state` with the sha256 of its content (DIGEST_KEY, as our model files carry); `keep_previous`: the
    resume point now at `path` is good, and becomes PREVIOUS_CHECKPOINT first."""
    if keep_previous and path.exists():
        os.replace(path, path.with_name(PREVIOUS_CHECKPOINT))
    atomic_torch_save({**state, DIGEST_KEY: tensor_digest(_as_tensors(state))}, path)


def load_resume_point(out: Path, say: bool = True) -> tuple[dict | None, Path | None]:
    """The newest good resume point in `out` (CHECKPOINT, else PREVIOUS_CHECKPOINT) and its file; (None, None):
    start from step 0. A damaged one (unreadable, or its content not matching its sha256) is named on stderr
    (`say`), with what happens instead. Files written before the sha256 existed load unchecked."""
    damaged = False
    for path in (out / CHECKPOINT, out / PREVIOUS_CHECKPOINT):
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            digest = state.pop(DIGEST_KEY, None)
            if digest is not None and tensor_digest(_as_tensors(state)) != digest:
                raise ValueError("its content does not match the sha256 written with it (bit rot or a damaged copy)")
        except Exception as err:  # a torn zip, a bad pickle, a digest mismatch
            damaged = True
            if say:
                print(
                    f"warning: the resume point {path} is damaged ({type(err).__name__}: {err}); it is not used",
                    file=sys.stderr,
                    flush=True,
                )
            continue
        if damaged and say:
            print(
                f"warning: resuming from the previous resume point {path} (step {state['step']})",
                file=sys.stderr,
                flush=True,
            )
        return state, path
    if damaged and say:
        print(f"warning: no good resume point: the stage restarts from step 0 in {out}", file=sys.stderr, flush=True)
    return None, None
