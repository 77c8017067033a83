"""Rebuild the proxy-code teacher that the tiny preset ships (sweeps/preset/tiny_teacher.safetensors).

    python -m bench.tiny_teacher                      # train it (minutes: docs/measurements.md), write the shipped file
    python -m bench.tiny_teacher --out /tmp/t.safetensors preset.teacher.loop.steps=50   # elsewhere, overridden

The released MaskGIT-VQGAN cannot be downloaded offline and a teacher good enough to leave room for K costs more
than the default run's whole budget, so the preset loads a file trained once by this command: the teacher stage of
a one-cell tiny sweep with `teacher.source=train`, whose recipe is the preset's `teacher` block (architecture,
optimiser, loop, seed). One thread, so the float sums run in one order: two rebuilds in one environment give the
same tensors (safetensors orders the metadata differently at every write, so the bytes differ); another thread
count or CPU changes the weights, not the quality. It prints the largest weight difference from the file shipped
before. Trailing arguments are sweep overrides (`data.train_images=...`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as tensors_of  # from bytes: the file read may be the one about to be replaced

from bench.sweep import SWEEPS

SHIPPED = SWEEPS / "preset" / "tiny_teacher.safetensors"
# a one-cell grid: the plan adds the shared teacher stage only for a grid with trained cells
ONE_CELL = [
    "preset=tiny",
    "preset.teacher.source=train",
    "grid.sizes=[S]",
    "grid.num_tokens=[16]",
    "grid.stages=[stage1]",
]


def max_weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two files' tensors (inf when their names or shapes differ)."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    return max(((a[k].double() - b[k].double()).abs().max().item() for k in a), default=0.0)


def build(out: Path, overrides: list[str]) -> Path:
    """Train the preset's teacher in a scratch outputs folder and copy its model file to `out`."""
    from hydra import compose, initialize_config_dir

    from bench.core.io import atomic_file
    from bench.plan import make_plan
    from bench.stages.task import run_task

    with tempfile.TemporaryDirectory(prefix="tiny_teacher-") as work:
        with initialize_config_dir(str(SWEEPS), version_base=None):
            cfg = compose("sweep", overrides=[*ONE_CELL, f"outputs={work}", *overrides])
        task = make_plan(cfg).task("_shared/teacher")
        result = run_task(task)
        print(
            f"teacher: {result['steps']} steps in {result['wall_s']:.0f} s, final train l2 "
            f"{result['final_logs']['teacher/l2']:.5f}"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(out) as f, open(task.product, "rb") as src:
            shutil.copyfileobj(src, f)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=SHIPPED, help=f"where to write it (default: {SHIPPED})")
    ap.add_argument("overrides", nargs="*", help="sweep overrides, e.g. preset.teacher.loop.steps=50")
    args = ap.parse_args(argv)
    # read first: `out` may be the shipped file. Tensors, not bytes, are compared: safetensors writes the metadata
    # in an order that changes from one write to the next
    shipped = tensors_of(SHIPPED.read_bytes()) if SHIPPED.is_file() else None
    torch.set_num_threads(1)
    out = build(args.out, args.overrides)
    print(f"wrote {out}")
    if shipped is not None:
        diff = max_weight_difference(tensors_of(out.read_bytes()), shipped)
        print(
            "the same tensors as the file shipped before"
            if diff == 0
            else f"largest weight difference {diff:.3g} from the file shipped before"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
