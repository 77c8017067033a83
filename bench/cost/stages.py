"""FLOPs per step of each stage spec (bench.speed.flops) and its steps, per cell of a plan.

What a step counts: training stages 3x the forward of the trained modules (forward + backward), 1x the forward of
frozen ones that only feed them (the teacher, a frozen encoder), 2-3x the loss networks gradients flow through;
times the global batch. Evaluation stages: the forward of the models under test per image or sample (tokenizer
encode/decode, the generator's sampling passes) times the batch; the Inception network of FID/IS (real_stats,
reference_batch and the evaluations' feature extraction) has no analytic count and is left out.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import models
from bench.speed import flops as FL
from bench.stages import single_process

from .device import Device

# the estimate of a cell's training stages, as tags of its MLflow run (bench.launch.prepare_tracking): the report's
# cost table (reports/tables.py, which names them too) shows them beside the measured cost_gpu_hours/cost_wall_hours
TAG_EST_GPU_HOURS = "titok.cost_est_gpu_hours"
TAG_EST_WALL_HOURS = "titok.cost_est_wall_hours"
TAG_EST_BASIS = "titok.cost_est_basis"  # the device, peak and utilisation behind the estimate
IMAGENET_TRAIN_IMAGES = 1_281_167  # the ILSVRC-2012 training split, where the data config does not cap it
CROPS = {"flip": 2, "ten": 10}  # pretokenize: crops per image


@dataclass(frozen=True)
class StageCost:
    cell: str
    stage: str
    flops_per_step: int | None  # None: no analytic count (Inception only)
    steps: int
    what: str  # the unit of a step
    single: bool = False  # a single-process stage: its job holds one GPU (bench.stages.single_process)

    @property
    def flops(self) -> int:
        return (self.flops_per_step or 0) * self.steps

    def hours(self, device: Device) -> tuple[float, float]:
        """(device-hours, wall hours), on the GPUs the stage's job holds."""
        if self.single and not device.cpu:
            device = dataclasses.replace(device, devices=1, cores=1)
        wall = self.flops / device.job_flops / 3600
        return wall * device.cores, wall


def _tokenizer_config(name: str, overrides: dict) -> models.TiTokConfig:
    return models.variants.with_overrides(models.resolve(name).config, dict(overrides))


def _teacher_config(overrides: dict) -> models.VQGANConfig:
    o = dict(overrides)
    if "channel_mult" in o:
        o["channel_mult"] = tuple(o["channel_mult"])
    return models.variants.with_overrides(models.resolve("MaskGIT-VQGAN").config, o)


def cell_models(tasks) -> tuple[models.TiTokConfig | None, models.GeneratorConfig | None]:
    """The tokenizer config the cell's evaluations read (the stage-2 form if it trains one) and its generator."""
    by = {t.stage: t.spec for t in tasks}
    tok = None
    if "stage1" in by:  # built as the stage builds it (bench.train.tokenizer): the teacher's VQGAN, the data's size
        s1 = by["stage1"]
        tok = _tokenizer_config(
            s1.model,
            dict(
                s1.model_overrides,
                vqgan=_teacher_config(s1.teacher.overrides),
                image_size=s1.data.image_size,
                pixel_decoder="stage2" in by,
            ),
        )
    if "single" in by:  # as bench.train.tokenizer builds it: the data's image size
        s = by["single"]
        tok = _tokenizer_config(s.model, dict(s.model_overrides, image_size=s.data.image_size))
    gen = None
    if "generator" in by and tok is not None:
        g = by["generator"]
        gen = models.variants.with_overrides(
            models.resolve(g.model).config,
            dict(g.model_overrides, num_tokens=tok.num_latent_tokens, codebook_size=tok.codebook_size),
        )
    return tok, gen


def trains_tokenizer(cell) -> bool:
    """Whether the cell trains its tokenizer (a grid cell, or a single-stage one) rather than loading a release."""
    return cell.size is not None or any(t.stage == "single" for t in cell.tasks)


def released_models(name: str) -> tuple[models.TiTokConfig, models.GeneratorConfig | None]:
    v = models.resolve(name)
    gen = models.resolve(v.generator).config if v.generator else None
    return v.config, gen


def _decode(c: models.TiTokConfig) -> int:
    """Tokens -> pixels: a stage-1 tokenizer decodes its proxy codes through the teacher's decoder."""
    if c.two_stage and not c.pixel_decoder:
        return FL.titok_decode(c, pixel_decoder=False) + FL.vqgan_decoder(c.vqgan, c.token_grid)
    return FL.titok_decode(c)


def _train_images(data) -> int:
    return data.num_images or IMAGENET_TRAIN_IMAGES


def stage_cost(task, tok: models.TiTokConfig | None, gen: models.GeneratorConfig | None) -> StageCost:
    cost = _stage_cost(task, tok, gen)
    return dataclasses.replace(cost, single=single_process(task.stage))


def _train_image_flops(stage: str, s, tok: models.TiTokConfig | None, gen: models.GeneratorConfig | None):
    """A training stage's FLOPs per image of its step; None: not a training stage."""
    if stage == "teacher":
        vq = _teacher_config(s.overrides)
        size = s.data.image_size
        return 3 * (FL.vqgan_encode(vq, size) + FL.vqgan_decoder(vq, size // 2 ** (len(vq.channel_mult) - 1)))
    if stage == "stage1":
        return FL.train_stage1(dataclasses.replace(tok, pixel_decoder=False))
    if stage == "stage2":
        return FL.train_stage2(dataclasses.replace(tok, pixel_decoder=True), s.perceptual, s.gan)
    if stage == "single":
        return FL.train_single_stage(tok, s.perceptual, s.gan)
    if stage == "generator":
        return 3 * FL.generator_forward(gen) if getattr(s, "tokens", None) else FL.train_generator(tok, gen)
    return None


def _stage_cost(task, tok: models.TiTokConfig | None, gen: models.GeneratorConfig | None) -> StageCost:
    s, stage, cell = task.spec, task.stage, task.cell
    per = _train_image_flops(stage, s, tok, gen)
    if per is not None:  # a training stage: its loop's steps at its global batch
        return StageCost(cell, stage, per * s.loop.batch_size, s.loop.steps, f"batch {s.loop.batch_size}")
    if stage == "pretokenize":
        images = _train_images(s.data) * CROPS.get(s.crops, 1)
        return StageCost(
            cell,
            stage,
            FL.titok_encode(tok) * s.batch_size,
            math.ceil(images / s.batch_size),
            f"batch {s.batch_size} ({s.crops} crops)",
        )
    if stage == "eval_recon":
        per = FL.titok_encode(tok) + _decode(tok)
        return StageCost(
            cell, stage, per * s.batch_size, math.ceil(s.num_images / s.batch_size), f"batch {s.batch_size}"
        )
    if stage == "eval_gen":
        batch = s.sample_batch_size or s.batch_size
        per = FL.generation(gen, gen.sampler.updated(**s.sampler)) + _decode(tok)
        return StageCost(cell, stage, per * batch, math.ceil(s.num_samples / batch), f"batch {batch}")
    if stage == "probe":
        return StageCost(
            cell,
            stage,
            FL.titok_encode(tok) * s.batch_size,
            math.ceil((s.num_train + s.num_val) / s.batch_size),
            f"batch {s.batch_size}",
        )
    if stage == "speed" and gen is None:  # a tokenizer's encode and decode
        per = FL.titok_encode(tok) + _decode(tok)
        return StageCost(cell, stage, per * s.batch_size, s.warmup + s.repeats, f"batch {s.batch_size}")
    if stage == "speed":
        per = FL.generation(gen, gen.sampler.updated(**s.sampler)) + _decode(tok)
        return StageCost(cell, stage, per * s.batch_size, s.warmup + s.repeats, f"batch {s.batch_size}")
    return StageCost(cell, stage, None, 0, "Inception only")  # real_stats, reference_batch


def plan_costs(plan) -> dict[str, list[StageCost]]:
    """Per cell (and "_shared"), the cost of each stage, in plan order."""
    out = {t.cell: [stage_cost(s, None, None) for s in plan.shared] for t in plan.shared[:1]}
    for cell in plan.cells:
        tok, gen = cell_models(cell.tasks) if trains_tokenizer(cell) else released_models(cell.name)
        out[cell.name] = [stage_cost(t, tok, gen) for t in cell.tasks]
    return out


def cell_estimates(plan, device: Device) -> dict[str, dict[str, float]]:
    """cost_est_gpu_hours and cost_est_wall_hours of each cell's training stages (what cell_cost measures)."""
    out = {}
    cells = {c.name: c for c in plan.cells}
    for cell, lines in plan_costs(plan).items():
        if cell not in cells:  # the shared stages
            continue
        train = {t.stage for t in cells[cell].tasks if t.resources == "train"}
        gpu = wall = 0.0
        for line in lines:
            if line.stage in train:
                g, w = line.hours(device)
                gpu, wall = gpu + g, wall + w
        out[cell] = {"cost_est_gpu_hours": gpu, "cost_est_wall_hours": wall}
    return out
