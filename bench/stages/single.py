"""Stage `single`: single-stage VQ or VAE tokenizer training (L2, LPIPS, ConvNeXt, GAN, quantiser loss or KL;
bench.train.tokenizer.train_single_stage): each cell of grid=single_stage, one released architecture.

Identity: the model and its overrides, loss weights, perceptual and GAN settings, data, optimiser, loop and the
stand-in permission; not the device, data root and workers, or how often it logs and checkpoints. It reads no other
stage.
"""

from __future__ import annotations

from omegaconf import DictConfig

import models
from bench.stages import base
from bench.stages.planning import PlanContext, PlanError, container, training_keywords
from bench.train.recipes import GANConfig, LoopConfig, OptimConfig, PerceptualConfig, gan_from
from bench.train.recipes import SingleStageConfig as Spec
from bench.train.stage import MODEL_FILE

NAME = "single"
RESOURCES = "train"
PRODUCT = MODEL_FILE
RULE = base.IdentityRule(NAME, base.TRAINING_IGNORED)
PRESET = {
    "single.loop": LoopConfig,
    "single.optim": OptimConfig,
    "single.gan": GANConfig,
    "single.gan.optim": OptimConfig,
    "single.perceptual": PerceptualConfig,
    "single.tokenizer": models.TiTokConfig,
}


def check(cfg: DictConfig) -> None:
    """Each name of grid.models is a single-stage tokenizer trained from scratch."""
    p = cfg.preset
    if "single" not in p:
        raise PlanError(f"grid.stages has single, but preset {p.name} has no single settings (paper.yaml's block)")
    if {"stage1", "stage2"} & set(cfg.grid.stages):
        raise PlanError("grid.stages has single beside stage1/stage2: a cell is trained in one stage or in two")
    if cfg.grid.sizes or cfg.grid.num_tokens:
        raise PlanError(
            "grid.stages has single: list single-stage names (TiTok-{XY}-{K}-{VQ,VAE}) in grid.models and "
            "set grid.sizes=[] grid.num_tokens=[] (those make two-stage cells TiTok-{S,B,L}-{K})"
        )
    if not cfg.grid.models:
        raise PlanError(
            "grid.stages has single but grid.models is empty: name the single-stage tokenizers to train, "
            "e.g. grid.models=[TiTok-BL-64-VQ]"
        )
    for name in cfg.grid.models:
        m = models.resolve(name).config
        if getattr(m, "two_stage", True):
            raise PlanError(
                f"grid.models has {name}, a two-stage tokenizer, but the single stage trains single-stage "
                "ones (TiTok-{XY}-{K}-{VQ,VAE}); train two-stage cells with stage1 and stage2"
            )
        for part in ("encoder_size", "decoder_size"):
            if getattr(m, part) not in p.sizes:
                raise PlanError(
                    f"{name}: its {part} {getattr(m, part)!r} is not in preset.sizes of preset {p.name} "
                    f"(known: {', '.join(p.sizes)})"
                )


def plan(c: PlanContext):
    """Each name of grid.models: its architecture (encoder and decoder sizes through preset.sizes,
    preset.single.tokenizer's overrides) and preset.single's recipe."""
    if c.size is not None or "single" not in c.stages:
        return None
    p, s = c.p, c.p.single
    m = models.resolve(c.name).config
    overrides = dict(container(s.tokenizer), encoder_size=p.sizes[m.encoder_size], decoder_size=p.sizes[m.decoder_size])
    return Spec(
        model=c.name,
        model_overrides=overrides,
        quantizer_weight=s.quantizer_weight,
        kl_weight=s.kl_weight,
        perceptual=PerceptualConfig(**container(s.perceptual)),
        gan=gan_from(container(s.gan)),
        **training_keywords(c, s),
        allow_random_weights=c.allow_random,
    ), {}


def run(spec: Spec, ctx: base.Context) -> dict:
    from bench.train.tokenizer import train_single_stage

    return base.training_result(train_single_stage(spec, ctx.out, ctx.log))
