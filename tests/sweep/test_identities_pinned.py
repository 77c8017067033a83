"""The stage identities of every grid under every preset, pinned: an outputs folder written before a change to the
code stays valid after it, so re-running a finished sweep submits nothing. A change that is meant to alter what a
stage computes (and so its identity) rewrites identities.json:

    python -m tests.sweep.test_identities_pinned DIR   # DIR: where the rehearsal's files are written
"""

import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from bench.plan import make_plan
from bench.sweep import SWEEPS

PINNED = Path(__file__).with_name("identities.json")
PRESETS = ("tiny", "rehearsal", "paper")


def identities(imagenet: Path, outputs: Path) -> dict:
    """{grid/preset: {"shared": {stage: identity}, "cells": {cell: {"id": cell id, stage: identity}}}}."""
    out = {}
    for grid in sorted(p.stem for p in (SWEEPS / "grid").glob("*.yaml")):
        for preset in PRESETS:
            overrides = [f"grid={grid}", f"preset={preset}", f"outputs={outputs}"]
            if preset != "tiny" or grid == "released":  # the released models are evaluated on ImageNet's layout
                overrides += ["data=imagenet", f"data.root={imagenet}", "data.num_classes=4"]
            with initialize_config_dir(str(SWEEPS), version_base=None):
                plan = make_plan(compose("sweep", overrides=overrides))
            out[f"{grid}/{preset}"] = {
                "shared": {t.stage: t.identity for t in plan.shared},
                "cells": {c.name: {"id": c.cell_id, **{t.stage: t.identity for t in c.tasks}} for c in plan.cells},
            }
    return out


def test_every_grid_and_preset_keeps_its_stage_identities(rehearsal_files, tmp_path, monkeypatch):
    monkeypatch.setenv("TITOK_BENCH_WEIGHTS", str(rehearsal_files.weights))
    now, pinned = identities(rehearsal_files.imagenet, tmp_path), json.loads(PINNED.read_text())
    assert sorted(now) == sorted(pinned)
    changed = {
        f"{key} {cell}": (pinned[key]["cells"].get(cell), ids)
        for key in now
        for cell, ids in now[key]["cells"].items()
        if pinned[key]["cells"].get(cell) != ids
    }
    assert not changed, changed
    assert {k: v["shared"] for k, v in now.items()} == {k: v["shared"] for k, v in pinned.items()}


if __name__ == "__main__":
    import os

    from tests.infra import rehearsal

    root = Path(sys.argv[1])
    rehearsal.write_imagenet_tree(root / "imagenet")
    rehearsal.write_weights_cache(root / "weights", rehearsal.shared_names())
    os.environ["TITOK_BENCH_WEIGHTS"] = str(root / "weights")
    PINNED.write_text(json.dumps(identities(root / "imagenet", root / "outputs"), indent=1, sort_keys=True) + "\n")
