"""Training-step throughput: one optimisation step of a stage's own `Objective` (the one its train_* function
trains, from bench.train.tokenizer / bench.train.generator) taken by the training loop's own step
(bench.train.trainer.Trainer: forward, losses, backward, AdamW with the paper's weight-decay groups, clipping, the
discriminator's update, the EMA), on a fixed random batch, with random weights. The recipe is the paper preset's
(sweeps/preset/paper.yaml, the one home of the paper's numbers); single-stage training, which no preset trains,
reads the preset's `single` block.

    step = training_step("stage2", tokenizer_config("TiTok-L-32"), batch_size=8)
    logs = step()                                   # one step of step.trainer at step.step on step.batch
    row = measure_training("stage2", tokenizer_config("TiTok-L-32"), batch_size=8, precision="bf16")

Stages: stage1 (two-stage tokenizers), stage2 (stage 2 of a two-stage tokenizer; for the other tokenizers their
single-stage training, task "train-single"), generator (VQ tokenizers; the frozen tokenizer encodes each batch on
the fly) and generator_pretokenized (the same objective on the pretokenize stage's ids: a batch of [B, 2, K] crop
ids, no encoder; bench/train/pretokenize.py). Both generator rows take the batch's crops from the same
`crop_choice`; neither counts data loading (which only makes on the fly slower). The pretrained loss networks
(ConvNeXt-S, LPIPS) come from the weights cache, or are seeded random stand-ins where it lacks them
(allow_random_weights; the row's note says so): the cost is the same.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

import models
from bench.core.dist import DistInfo
from bench.data.tokens import crop_choice
from bench.train.generator import generator_objective
from bench.train.recipes import (
    GeneratorTrainConfig,
    PerceptualConfig,
    SingleStageConfig,
    Stage1Config,
    Stage2Config,
    gan_from,
    loop_from,
    optim_from,
)
from bench.train.tokenizer import single_stage_objective, stage1_objective, stage2_model, stage2_objective
from bench.train.trainer import Objective, Trainer

from . import flops as FL
from .measure import Runner
from .timing import time_interleaved, time_runs

TRAIN_STAGES = ("stage1", "stage2", "generator", "generator_pretokenized")
Recipe = Stage1Config | Stage2Config | SingleStageConfig | GeneratorTrainConfig
PAPER_PRESET = Path(__file__).resolve().parents[2] / "sweeps" / "preset" / "paper.yaml"
# the cluster the paper preset's global batches are split over (one process per GPU): its GPUs per job
PAPER_CLUSTER = Path(__file__).resolve().parents[2] / "sweeps" / "cluster" / "example.yaml"
PRESET_SECTIONS = {
    "stage1": "stage1",
    "stage2": "stage2",
    "single": "single",
    "generator": "generator",
    "generator_pretokenized": "generator",
}
LOOP_STEP = "the loop's step (AdamW with the paper's weight-decay groups, clipping, EMA)"


@dataclass
class TrainingStep:
    """A stage's objective in the loop's Trainer with a fixed batch; calling it takes one optimisation step."""

    task: str
    trainer: Trainer
    batch: tuple[torch.Tensor, ...]  # (images, labels); the generator's: (images or crop ids, labels, crop)
    step: int  # the schedule position timed: the first where every optimizer of the objective is active
    flops_per_image: int
    note: str

    def __call__(self, logs: bool = True) -> dict[str, float]:
        return self.trainer.step(self.step, self.batch, logs=logs)


def paper_recipe(stage: str) -> Stage1Config | Stage2Config | SingleStageConfig | GeneratorTrainConfig:
    """The settings of "stage1", "stage2", "single" or "generator" as the paper preset holds them (bench.plan builds
    the sweep's from the same file), loss networks allowed to be stand-ins."""
    stage = "generator" if stage == "generator_pretokenized" else stage
    section = OmegaConf.to_container(OmegaConf.load(PAPER_PRESET)[stage], resolve=True)
    common = {"optim": optim_from(section["optim"]), "loop": loop_from(section["loop"])}
    if stage == "stage1":
        return Stage1Config(
            **common,
            decoder_warmup_fraction=section["decoder_warmup_fraction"],
            continuous_fraction=section["continuous_fraction"],
        )
    if stage == "stage2":
        return Stage2Config(
            **common,
            perceptual=PerceptualConfig(**section["perceptual"]),
            gan=gan_from(section["gan"]),
            allow_random_weights=True,
        )
    if stage == "single":
        return SingleStageConfig(
            **common,
            quantizer_weight=section["quantizer_weight"],
            kl_weight=section["kl_weight"],
            perceptual=PerceptualConfig(**section["perceptual"]),
            gan=gan_from(section["gan"]),
            allow_random_weights=True,
        )
    return GeneratorTrainConfig(
        **common, label_smoothing=section["label_smoothing"], unmasked_weight=section["unmasked_weight"]
    )


def paper_loop(section: str, gpus: int | None = None) -> dict:
    """The paper preset's loop for a stage (`section`: a key of PRESET_SECTIONS) as one GPU runs it: its precision,
    the global batch, the GPUs it is split over (`gpus`, default the example cluster's nodes x gpus_per_node) and
    the per-GPU batch (global / GPUs) and micro-batch (per-GPU / grad_accum), which is what must fit in memory."""
    loop = OmegaConf.to_container(OmegaConf.load(PAPER_PRESET)[PRESET_SECTIONS[section]].loop, resolve=True)
    if gpus is None:
        cluster = OmegaConf.load(PAPER_CLUSTER)
        gpus = int(cluster.nodes) * int(cluster.gpus_per_node)
    accum = int(loop.get("grad_accum") or 1)
    per_gpu = loop["batch_size"] // gpus
    return {
        "precision": loop["precision"],
        "batch_size": loop["batch_size"],
        "gpus": gpus,
        "per_gpu": per_gpu,
        "grad_accum": accum,
        "micro_batch": max(1, per_gpu // accum),
    }


def _reconstruction_terms(recipe: Stage2Config | SingleStageConfig, *extra: str) -> str:
    p, gan = recipe.perceptual, recipe.gan
    weighted = (("LPIPS", p.lpips_weight), ("ConvNeXt", p.convnext_weight), ("GAN", gan.weight))
    terms = " + ".join(["L2", *(name for name, weight in weighted if weight > 0), *extra])
    return terms + (", then the discriminator's update (hinge + LeCam)" if gan.weight > 0 else "")


# each builder: the stage's recipe (given, or the default), its Objective over random-weight models, FLOPs per
# image, and what the step holds
def _stage1(c: models.TiTokConfig, _, recipe: Stage1Config | None) -> tuple[Stage1Config, Objective, int, str]:
    if not c.two_stage:
        raise ValueError("stage 1 trains two-stage tokenizers")
    recipe = recipe or paper_recipe("stage1")
    teacher = models.build_from_config(c.vqgan)
    tokenizer = models.build_from_config(dataclasses.replace(c, pixel_decoder=False))
    return (
        recipe,
        stage1_objective(recipe, tokenizer, teacher),
        FL.train_stage1(c),
        "stage1_objective: CE to a random teacher's codes + quantiser loss",
    )


def _stage2(
    c: models.TiTokConfig, _, recipe: Stage2Config | SingleStageConfig | None
) -> tuple[Stage2Config | SingleStageConfig, Objective, int, str]:
    if c.two_stage:
        recipe = recipe or paper_recipe("stage2")
        stage1 = models.build_from_config(dataclasses.replace(c, pixel_decoder=False))
        objective = stage2_objective(recipe, stage2_model(stage1, models.build_from_config(c.vqgan)))
        flops = FL.train_stage2(c, recipe.perceptual, recipe.gan)
        what = f"stage2_objective: frozen encoder; {_reconstruction_terms(recipe)}"
    else:
        recipe = recipe or paper_recipe("single")
        objective = single_stage_objective(recipe, models.build_from_config(c))
        flops = FL.train_single_stage(c, recipe.perceptual, recipe.gan)
        quantizer = "quantiser loss" if c.quantizer == "vq" else "KL"
        what = f"single_stage_objective: {_reconstruction_terms(recipe, quantizer)}"
    standins = [name for name, random in objective.random_weights.items() if random]
    if standins:
        what += f"; seeded random stand-in {' and '.join(standins)} (no weights in the cache)"
    return recipe, objective, flops, what


def _generator(
    c: models.TiTokConfig, g: models.GeneratorConfig | None, recipe: GeneratorTrainConfig | None
) -> tuple[GeneratorTrainConfig, Objective, int, str]:
    if g is None:
        raise ValueError("the generator stage needs a generator config")
    recipe = recipe or paper_recipe("generator")
    objective = generator_objective(recipe, models.build_from_config(c), models.build_from_config(g))
    return (
        recipe,
        objective,
        FL.train_generator(c, g),
        "generator_objective: frozen-tokenizer tokens of flipped images, arccos masking, MaskGIT loss",
    )


def _generator_pretokenized(
    c: models.TiTokConfig, g: models.GeneratorConfig | None, recipe: GeneratorTrainConfig | None
) -> tuple[GeneratorTrainConfig, Objective, int, str]:
    if g is None:
        raise ValueError("the generator stage needs a generator config")
    recipe = recipe or paper_recipe("generator")
    objective = generator_objective(recipe, None, models.build_from_config(g))
    return (
        recipe,
        objective,
        3 * FL.generator_forward(g),
        "generator_objective on pretokenized ids (centre crop / flip), arccos masking, MaskGIT loss",
    )


_BUILDERS: dict[str, Callable] = {
    "stage1": _stage1,
    "stage2": _stage2,
    "generator": _generator,
    "generator_pretokenized": _generator_pretokenized,
}


def training_step(
    stage: str,
    tokenizer_config: models.TiTokConfig,
    generator_config: models.GeneratorConfig | None = None,
    *,
    batch_size: int,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    seed: int = 0,
    recipe: Recipe | None = None,
    info: DistInfo | None = None,
    grad_accum: int = 1,
) -> TrainingStep:
    """The stage's objective (its recipe's losses and optimizers, random weights seeded by `seed`) in a Trainer
    with the recipe's loop settings at this batch size (this rank's) and precision (fp32, bf16 or fp16), on a random
    batch split into `grad_accum` micro-batches. `recipe`: the stage's settings (a SingleStageConfig for stage2 of a
    single-stage tokenizer); default the paper's. `info`: this rank in a process group (DDP; its device is used)."""
    if stage not in _BUILDERS:
        raise ValueError(f"unknown training stage {stage!r}; expected one of {TRAIN_STAGES}")
    device = info.device if info is not None else torch.device(device)
    c = tokenizer_config
    torch.manual_seed(seed)
    recipe, objective, flops, what = _BUILDERS[stage](c, generator_config, recipe)
    world = info.world_size if info is not None else 1
    loop = dataclasses.replace(recipe.loop, batch_size=batch_size * world, grad_accum=grad_accum, precision=precision)
    trainer = Trainer(objective, loop, info or DistInfo(device=device))
    g = torch.Generator(device).manual_seed(seed)
    images = torch.rand(batch_size, 3, c.image_size, c.image_size, generator=g, device=device)
    num_classes = generator_config.num_classes if generator_config is not None else 1000
    labels = torch.randint(0, num_classes, (batch_size,), generator=g, device=device)
    batch = (images, labels)
    if stage.startswith("generator"):
        crop = crop_choice(seed, 0, batch_size, 2).to(device)
        if stage == "generator_pretokenized":  # the ids of each image's centre crop and its flip
            images = torch.randint(0, c.codebook_size, (batch_size, 2, c.num_latent_tokens), generator=g, device=device)
        batch = (images, labels, crop)
    gan = getattr(recipe, "gan", None)
    step = gan.start_step if gan is not None and gan.weight > 0 else 0
    task = "train-single" if stage == "stage2" and not c.two_stage else f"train-{stage}"
    return TrainingStep(task, trainer, batch, step, flops, f"{task}: {what}; {LOOP_STEP}")


def measure_training(
    stage: str,
    tokenizer_config: models.TiTokConfig,
    generator_config: models.GeneratorConfig | None = None,
    *,
    batch_size: int,
    precision: str = "fp32",
    warmup: int = 1,
    repeats: int = 3,
    device: torch.device | str = "cpu",
    seed: int = 0,
    recipe: Recipe | None = None,
) -> dict:
    """Images/s of one training step of `stage` (see training_step), with its analytic FLOPs."""
    device = torch.device(device)
    step = training_step(
        stage,
        tokenizer_config,
        generator_config,
        batch_size=batch_size,
        precision=precision,
        device=device,
        seed=seed,
        recipe=recipe,
    )
    runner = step_runner(step, batch_size, precision)
    return runner.result(time_runs(runner, warmup=warmup, repeats=repeats, device=device))


def step_runner(step, batch_size: int, precision: str) -> Runner:
    """A timed training step and its row: images/s at `batch_size` in `precision`. Timed as the loop's steps
    between two log steps: nothing read from the device but the non-finite check."""
    row = {"task": step.task, "mode": precision, "options": precision, "precision": precision, "batch": batch_size}
    return Runner(
        functools.partial(step, logs=False),
        batch_size,
        step.flops_per_image,
        {**row, "unit": "images/s", "note": step.note},
    )


def pretokenized_speedups(rows: list[dict]) -> list[str]:
    """A line per model and precision with both generator rows: pretokenized samples/s over on the fly, beside
    the analytic bound (the FLOP ratio)."""
    by = {(r["task"], r.get("model"), r.get("precision")): r for r in rows if r.get("section") == "training"}
    lines = []
    for (task, model, precision), fly in by.items():
        tokens = by.get(("train-generator_pretokenized", model, precision))
        if task == "train-generator" and tokens is not None:
            bound = fly["gflop_per_item"] / tokens["gflop_per_item"]
            lines.append(
                f"# generator training, {model} {precision} batch {fly['batch']}: pretokenized "
                f"{tokens['throughput']:.3g} vs on the fly {fly['throughput']:.3g} {fly['unit']}: "
                f"{tokens['throughput'] / fly['throughput']:.2f}x (analytic bound {bound:.2f}x)"
            )
    return lines


def measure_generator_sources(
    tokenizer_config: models.TiTokConfig,
    generator_config: models.GeneratorConfig,
    *,
    batch_size: int,
    precision: str = "fp32",
    warmup: int = 1,
    repeats: int = 3,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> list[dict]:
    """The generator rows, on the fly and pretokenized (see training_step), timed round by round in turn so that a
    change in machine load hits both alike."""
    device = torch.device(device)
    runners = {}
    for stage in ("generator", "generator_pretokenized"):
        step = training_step(
            stage,
            tokenizer_config,
            generator_config,
            batch_size=batch_size,
            precision=precision,
            device=device,
            seed=seed,
        )
        runners[stage] = step_runner(step, batch_size, precision)
    timings = time_interleaved(runners, warmup=warmup, repeats=repeats, device=device)
    return [runners[stage].result(timings[stage]) for stage in runners]
