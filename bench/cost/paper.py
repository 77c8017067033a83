"""The paper's reported tokenizer training costs (bench/paper_cost.csv) and its recipe counted as the plan's stages
are, to set an estimate beside them.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
from pathlib import Path

import models
from bench.speed import flops as FL

from .stages import StageCost, cell_models, released_models, trains_tokenizer

PAPER_COST_CSV = Path(__file__).parents[1] / "paper_cost.csv"


@functools.lru_cache(maxsize=1)
def paper_costs() -> dict[str, dict]:
    """model -> the paper's tokenizer training cost row (bench/paper_cost.csv), numbers as numbers."""
    with open(PAPER_COST_CSV) as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        ints = ("resolution", "gpus", "hours", "a100_hours", "stage1_steps", "stage2_steps", "batch_size")
        return {r["model"]: {k: int(v) if k in ints else v for k, v in r.items()} for r in rows}


def paper_recipe_costs(model: str) -> list[StageCost]:
    """The paper's recipe for the released tokenizer `model` (its registry config; stage 2 with the paper preset's
    losses), at the steps and batch the paper's cost covers."""
    from bench.speed.training import paper_recipe

    row = paper_costs()[model]
    c = models.resolve(model).config
    s2 = paper_recipe("stage2")
    batch = row["batch_size"]
    return [
        StageCost(
            model,
            "stage1",
            FL.train_stage1(dataclasses.replace(c, pixel_decoder=False)) * batch,
            row["stage1_steps"],
            f"batch {batch}",
        ),
        StageCost(
            model, "stage2", FL.train_stage2(c, s2.perceptual, s2.gan) * batch, row["stage2_steps"], f"batch {batch}"
        ),
    ]


ARCHITECTURE = ("encoder", "decoder", "image_size", "patch_size", "num_latent_tokens", "two_stage")


def same_architecture(name: str, plan) -> bool:
    """Whether a cell's tokenizer is the paper's model of that name (sizes, resolution, K), whatever its recipe:
    the tiny preset's toy TiTok-L-32 is not."""
    cell = next(c for c in plan.cells if c.name == name)
    tok, _ = cell_models(cell.tasks) if trains_tokenizer(cell) else released_models(name)
    released = models.resolve(name).config
    return tok is not None and all(getattr(tok, f) == getattr(released, f) for f in ARCHITECTURE)


def same_recipe(stages: list[StageCost], row: dict, plan) -> bool:
    """Whether a cell trains what the paper's cost covers: the released config, stage 1 and stage 2 at the paper's
    steps and batch."""
    cell = next(c for c in plan.cells if c.name == stages[0].cell)
    by = {t.stage: t.spec for t in cell.tasks}
    if "stage1" not in by or "stage2" not in by:
        return False
    tok, _ = cell_models(cell.tasks)
    released = models.resolve(cell.name).config
    same_model = all(
        getattr(tok, f) == getattr(released, f)
        for f in ("codebook_size", "token_size", "encoder", "decoder", "image_size", "patch_size")
    )
    return same_model and all(
        by[s].loop.steps == row[f"{s}_steps"] and by[s].loop.batch_size == row["batch_size"]
        for s in ("stage1", "stage2")
    )
