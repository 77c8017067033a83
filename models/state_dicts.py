"""State dicts between files and models: reading a checkpoint file's tensors, the strict load into a model with a
readable mismatch report, and the errors both raise (they name the file and what to do)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (unreadable, corrupt, not the requested variant); the message names
    the file and what to do."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint that does not fit the model: names the missing and unexpected keys and shape conflicts."""

    def __init__(self, what: str, missing: list[str], unexpected: list[str], conflicts: list[tuple[str, tuple, tuple]]):
        self.missing, self.unexpected, self.conflicts = missing, unexpected, conflicts

        def show(items, n=12):
            items = list(items)
            more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
            return ", ".join(map(str, items[:n])) + more

        lines = [f"checkpoint does not fit {what}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if conflicts:
            lines.append(
                f"  shape conflicts ({len(conflicts)}): "
                + show(f"{k} checkpoint {list(a)} vs model {list(b)}" for k, a, b in conflicts)
            )
        super().__init__("\n".join(lines))


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Strict load with a readable error: missing / unexpected keys and shape conflicts."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    conflicts = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or conflicts:
        raise CheckpointMismatchError(what, missing, unexpected, conflicts)
    model.load_state_dict(state, strict=True, assign=any(p.is_meta for p in model.parameters()))
    return model


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or not a checkpoint at all
        raise CheckpointError(
            f"{path} could not be read as a checkpoint ({type(err).__name__}: {err}): it is "
            "truncated or corrupt (an interrupted copy or download?); copy it again"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state_dict of tensors")
    return state
