"""Stage `teacher`: a small MaskGIT-VQGAN trained for offline smoke runs (the released proxy-code teacher cannot be
downloaded there), shared by a grid's cells (bench.train.tokenizer.train_teacher).

Identity: the whole recipe (architecture overrides, commitment cost, data, optimiser, loop with its seed); not the
device, data root and workers, or how often it logs and checkpoints. It reads no other stage.
"""

from __future__ import annotations

from bench.stages import base
from bench.train.recipes import TeacherTrainConfig as Spec
from bench.train.tokenizer import MODEL_FILE

NAME = "teacher"
RESOURCES = "train"
SINGLE_PROCESS = True  # its dead-code reseeding draws per rank and is not re-synced: ranks would drift apart
PRODUCT = MODEL_FILE
RULE = base.IdentityRule(NAME, base.TRAINING_IGNORED)


def run(spec: Spec, ctx: base.Context) -> dict:
    from bench.train.tokenizer import train_teacher

    return base.training_result(train_teacher(spec, ctx.out, ctx.log))
