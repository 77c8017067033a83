"""Stage `teacher`: a small MaskGIT-VQGAN trained for offline smoke runs (the released proxy-code teacher cannot be
downloaded there), shared by a grid's cells (bench.train.tokenizer.train_teacher).

Identity: the whole recipe (architecture overrides, commitment cost, data, optimiser, loop with its seed); not the
device, data root and workers, or how often it logs and checkpoints. It reads no other stage.
"""

from __future__ import annotations

import models
from bench.stages import base
from bench.stages.planning import PlanContext, container, training_keywords
from bench.train.recipes import LoopConfig, OptimConfig
from bench.train.recipes import TeacherTrainConfig as Spec
from bench.train.stage import MODEL_FILE

NAME = "teacher"
RESOURCES = "train"
SINGLE_PROCESS = True  # its dead-code reseeding draws per rank and is not re-synced: ranks would drift apart
PRODUCT = MODEL_FILE
RULE = base.IdentityRule(NAME, base.TRAINING_IGNORED)
SHARED = True
PRESET = {"teacher.loop": LoopConfig, "teacher.optim": OptimConfig, "teacher.overrides": models.VQGANConfig}


def plan(c: PlanContext):
    """Trained in the run when preset.teacher.source is `train` and the grid has trained two-stage cells."""
    cfg, t = c.cfg, c.p.teacher
    if not (cfg.grid.sizes and cfg.grid.num_tokens and t.source == "train"):
        return None
    return Spec(
        overrides=container(t.overrides),
        **training_keywords(c, t),
    ), {}


def run(spec: Spec, ctx: base.Context) -> dict:
    from bench.train.tokenizer import train_teacher

    return base.training_result(train_teacher(spec, ctx.out, ctx.log))
