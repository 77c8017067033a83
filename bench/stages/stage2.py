"""Stage `stage2`: decoder fine-tuning of a stage-1 tokenizer (frozen encoder and quantiser; L2, ConvNeXt
perceptual and GAN losses), adding the pixel decoder (bench.train.tokenizer.train_stage2).

Identity: perceptual and GAN settings, data, optimiser, loop and the stand-in permission, plus its inputs: the
stage-1 tokenizer (that stage's identity) and the teacher (the teacher stage's identity or the released name);
not the device, data root and workers, or how often it logs and checkpoints.
"""

from __future__ import annotations

from omegaconf import DictConfig

from bench.stages import base
from bench.stages.planning import PlanContext, PlanError, container, training_keywords
from bench.train.recipes import GANConfig, LoopConfig, OptimConfig, PerceptualConfig, gan_from
from bench.train.recipes import Stage2Config as Spec
from bench.train.stage import MODEL_FILE

NAME = "stage2"
RESOURCES = "train"
PRODUCT = MODEL_FILE
RULE = base.IdentityRule(NAME, base.TRAINING_IGNORED, {"stage1": "init_from", "teacher": "teacher.source"})
PRESET = {
    "stage2.loop": LoopConfig,
    "stage2.optim": OptimConfig,
    "stage2.gan": GANConfig,
    "stage2.gan.optim": OptimConfig,
    "stage2.perceptual": PerceptualConfig,
}


def check(cfg: DictConfig) -> None:
    if "stage1" not in cfg.grid.stages:
        raise PlanError("grid.stages has stage2 without stage1: stage 2 fine-tunes the stage-1 tokenizer")
    if "stage2" not in cfg.preset:
        raise PlanError(f"grid.stages has stage2, but preset {cfg.preset.name} has no stage2 settings")


def plan(c: PlanContext):
    """After the cell's stage 1, with its teacher; the cell's tokenizer becomes the stage-2 model."""
    stage1 = c.tasks.get("stage1")
    if "stage2" not in c.stages or stage1 is None:
        return None
    s2 = c.p.stage2
    return Spec(
        init_from=stage1.product,
        teacher=stage1.spec.teacher,
        perceptual=PerceptualConfig(**container(s2.perceptual)),
        gan=gan_from(container(s2.gan)),
        **training_keywords(c, s2),
        allow_random_weights=c.allow_random,
    ), {"stage1": stage1, "teacher": c.shared.get("teacher")}


def run(spec: Spec, ctx: base.Context) -> dict:
    from bench.train.tokenizer import train_stage2

    return base.training_result(train_stage2(spec, ctx.out, ctx.log))
