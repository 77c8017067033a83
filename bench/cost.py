"""The cost of a plan before it runs: per stage, FLOPs per step (bench.speed.flops, the project's analytic count),
steps, and the device-hours and wall time on the configured cluster; beside it the paper's A100-hours where the
paper reports the cost of the same tokenizer (bench/paper_cost.csv).

    python -m bench.sweep grid=latent_vs_size preset=paper data=imagenet data.root=/data/imagenet \\
        action=plan cluster=example

The device: `cluster.device` {name, peak_tflops, utilization}. peak_tflops is the dense peak of one accelerator in
the precision the training runs in (A100: 312 bf16/fp16); null measures it here with bench.speed's matmul probe
(fp32, this process's threads: for a CPU cluster). utilization is an assumption the user states: the share of the
peak that a training step achieves (model-FLOPs utilisation; `python -m bench.speed --sections peak,training`
measures it on the machine it runs on). Estimated hours = FLOPs / (peak x utilization), nothing else: data loading,
evaluation during training, checkpoints, queueing and communication beyond what the utilisation absorbs are not
in it.

What a step counts (bench.speed.flops): training stages 3x the forward of the trained modules (forward + backward),
1x the forward of frozen ones that only feed them (the teacher, a frozen encoder), 2-3x the loss networks
gradients flow through; times the global batch. Evaluation stages: the forward of the models under test per image
or sample (tokenizer encode/decode, the generator's sampling passes) times the batch; the Inception network of
FID/IS (real_stats, reference_batch and the evaluations' feature extraction) has no analytic count and is left out.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import models
from bench.speed import flops as FL
from bench.stages import single_process

PAPER_COST_CSV = Path(__file__).with_name("paper_cost.csv")
# the estimate of a cell's training stages, as tags of its MLflow run (bench.launch.prepare_tracking): the report's
# cost table (reports/tables.py, which names them too) shows them beside the measured cost_gpu_hours/cost_wall_hours
TAG_EST_GPU_HOURS = "titok.cost_est_gpu_hours"
TAG_EST_WALL_HOURS = "titok.cost_est_wall_hours"
TAG_EST_BASIS = "titok.cost_est_basis"  # the device, peak and utilisation behind the estimate
IMAGENET_TRAIN_IMAGES = 1_281_167  # the ILSVRC-2012 training split, where the data config does not cap it
CROPS = {"flip": 2, "ten": 10}  # pretokenize: crops per image


@dataclass(frozen=True)
class Device:
    """One accelerator (or, on a CPU cluster, one job's CPU) as the estimate sees it."""

    name: str
    peak_flops: float  # dense peak FLOP/s of one device (CPU: of the job's threads)
    utilization: float  # assumed share of the peak a step achieves
    peak_source: str  # "cluster config" or "measured here (...)"
    devices: int  # accelerators per job (nodes x gpus_per_node); CPU: 1 (the job)
    cores: int  # CPU: cores per job (what cost_gpu_hours counts on a CPU); GPU: = devices
    cpu: bool

    @property
    def job_flops(self) -> float:
        return self.peak_flops * self.utilization * self.devices

    def describe(self) -> str:
        where = (
            f"{self.devices} GPUs per job"
            if not self.cpu
            else f"one job on {self.cores} cores; device-hours are core-hours, as cost_gpu_hours counts them"
        )
        return (
            f"device {self.name}: peak {self.peak_flops / 1e12:.4g} TFLOP/s ({self.peak_source}), utilisation "
            f"{self.utilization:.0%} assumed (cluster.device.utilization) -> {self.job_flops / 1e12:.4g} "
            f"TFLOP/s per job; {where}"
        )


class CostError(ValueError):
    """A cluster config whose device cannot give an estimate; the message says which value and what to do."""


@functools.lru_cache(maxsize=4)
def measured_peak(budget_s: float = 1.0) -> float:
    """fp32 matmul FLOP/s of this process (bench.speed's probe), once per process."""
    import torch

    from bench.speed.timing import matmul_peak

    return matmul_peak(torch.float32, torch.device("cpu"), budget_s=budget_s)


def device_from_cluster(cluster: dict) -> Device:
    """The estimate's device from a cluster config's `device` block and its GPUs per node."""
    d = dict(cluster.get("device") or {})
    gpus = int(cluster.get("nodes") or 1) * int(cluster.get("gpus_per_node") or 0)
    cores = (
        int(cluster.get("nodes") or 1)
        * int(cluster.get("tasks_per_node") or 1)
        * int(cluster.get("cpus_per_task") or 1)
    )
    util = d.get("utilization")
    if not isinstance(util, int | float) or not 0 < util <= 1:
        raise CostError(
            f"cluster.device.utilization={util!r}: state the assumed share of the peak a training step "
            f"achieves, a number in (0, 1] (e.g. cluster.device.utilization=0.4)"
        )
    peak = d.get("peak_tflops")
    if peak is None:
        if gpus:
            raise CostError(
                "cluster.device.peak_tflops is not set: give the accelerator's dense peak in TFLOP/s "
                "(A100: 312 bf16/fp16); only a CPU cluster's peak is measured here"
            )
        value, source = measured_peak(), "measured here: bench.speed fp32 matmul probe"
    elif not isinstance(peak, int | float) or peak <= 0:
        raise CostError(f"cluster.device.peak_tflops={peak!r}: a positive number of TFLOP/s, or null to measure it")
    else:
        value, source = float(peak) * 1e12, "cluster config"
    name = d.get("name") or ("cpu" if not gpus else "gpu")
    return Device(name, value, float(util), source, gpus or 1, gpus or cores, cpu=not gpus)


# ---- FLOPs per step of each stage ----------------------------------------------------------------------------------
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


def _cell_models(tasks) -> tuple[models.TiTokConfig | None, models.GeneratorConfig | None]:
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


def _trained(cell) -> bool:
    """Whether the cell trains its tokenizer (a grid cell, or a single-stage one) rather than loading a release."""
    return cell.size is not None or any(t.stage == "single" for t in cell.tasks)


def _released(name: str) -> tuple[models.TiTokConfig, models.GeneratorConfig | None]:
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


def _stage_cost(task, tok: models.TiTokConfig | None, gen: models.GeneratorConfig | None) -> StageCost:
    s, stage, cell = task.spec, task.stage, task.cell
    if stage == "teacher":
        vq = _teacher_config(s.overrides)
        size = s.data.image_size
        per = 3 * (FL.vqgan_encode(vq, size) + FL.vqgan_decoder(vq, size // 2 ** (len(vq.channel_mult) - 1)))
        return StageCost(cell, stage, per * s.loop.batch_size, s.loop.steps, f"batch {s.loop.batch_size}")
    if stage == "stage1":
        c = dataclasses.replace(tok, pixel_decoder=False)
        return StageCost(
            cell, stage, FL.train_stage1(c) * s.loop.batch_size, s.loop.steps, f"batch {s.loop.batch_size}"
        )
    if stage == "stage2":
        c = dataclasses.replace(tok, pixel_decoder=True)
        return StageCost(
            cell,
            stage,
            FL.train_stage2(c, s.perceptual, s.gan) * s.loop.batch_size,
            s.loop.steps,
            f"batch {s.loop.batch_size}",
        )
    if stage == "single":
        return StageCost(
            cell,
            stage,
            FL.train_single_stage(tok, s.perceptual, s.gan) * s.loop.batch_size,
            s.loop.steps,
            f"batch {s.loop.batch_size}",
        )
    if stage == "generator":
        per = 3 * FL.generator_forward(gen) if getattr(s, "tokens", None) else FL.train_generator(tok, gen)
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
        tok, gen = _cell_models(cell.tasks) if _trained(cell) else _released(cell.name)
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


# ---- the paper's numbers --------------------------------------------------------------------------------------------
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
    tok, _ = _cell_models(cell.tasks) if _trained(cell) else _released(name)
    released = models.resolve(name).config
    return tok is not None and all(getattr(tok, f) == getattr(released, f) for f in ARCHITECTURE)


def same_recipe(stages: list[StageCost], row: dict, plan) -> bool:
    """Whether a cell trains what the paper's cost covers: the released config, stage 1 and stage 2 at the paper's
    steps and batch."""
    cell = next(c for c in plan.cells if c.name == stages[0].cell)
    by = {t.stage: t.spec for t in cell.tasks}
    if "stage1" not in by or "stage2" not in by:
        return False
    tok, _ = _cell_models(cell.tasks)
    released = models.resolve(cell.name).config
    same_model = all(
        getattr(tok, f) == getattr(released, f)
        for f in ("codebook_size", "token_size", "encoder", "decoder", "image_size", "patch_size")
    )
    return same_model and all(
        by[s].loop.steps == row[f"{s}_steps"] and by[s].loop.batch_size == row["batch_size"]
        for s in ("stage1", "stage2")
    )


# ---- the printed view ----------------------------------------------------------------------------------------------
def _h(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def describe_cost(plan, device: Device) -> str:
    """The cost lines of `action=plan`: per stage, per cell, in total; the paper's recipes beside."""
    costs = plan_costs(plan)
    names = {c.name for c in plan.cells}
    paper = paper_costs()
    unit = "core-h" if device.cpu else "GPU-h"
    head = f"    {'stage':<22}{'FLOP/step':>11}{'steps':>11}{'PFLOP':>11}{unit:>11}{'wall-h':>10}   paper A100-h"
    lines = ["cost estimate (bench/cost.py): " + device.describe(), head]
    total_g = total_w = 0.0
    total_f = 0
    marked = []
    for cell, stages in costs.items():
        if not stages:
            continue
        lines.append(f"  {cell}")
        cell_g = cell_w = 0.0
        cell_f = 0
        for s in stages:
            g, w = s.hours(device)
            cell_g, cell_w, cell_f = cell_g + g, cell_w + w, cell_f + s.flops
            if s.flops_per_step is None:
                lines.append(
                    f"    {s.stage:<22}{'-':>11}{'-':>11}{'-':>11}{'-':>11}{'-':>10}   (Inception only: not counted)"
                )
                continue
            lines.append(
                f"    {s.stage:<22}{s.flops_per_step:>11.3e}{s.steps:>11,}{s.flops / 1e15:>11.4g}{_h(g):>11}{_h(w):>10}"
            )
        theirs = ""
        if cell in paper and cell in names and same_architecture(cell, plan):
            same = same_recipe(stages, paper[cell], plan)
            theirs = f"   {paper[cell]['a100_hours']:,}" + ("" if same else " (another recipe: see below)")
            marked.append(cell)
        if cell not in names and not cell_f:
            continue
        lines.append(
            f"    {'cell total':<22}{'':>11}{'':>11}{cell_f / 1e15:>11.4g}{_h(cell_g):>11}{_h(cell_w):>10}" + theirs
        )
        total_g, total_w, total_f = total_g + cell_g, total_w + cell_w, total_f + cell_f
    lines.append(
        f"  {'total':<24}{'':>11}{'':>11}{total_f / 1e15:>11.4g}{_h(total_g):>11}{_h(total_w):>10}"
        f"   ({len(plan.cells)} cells and the shared stages, run one after another)"
    )
    for model in marked:
        row = paper[model]
        recipe = paper_recipe_costs(model)
        g = sum(s.hours(device)[0] for s in recipe)
        w = sum(s.hours(device)[1] for s in recipe)
        parts = " + ".join(f"{s.stage} {s.steps:,} steps x {s.what} ({s.flops_per_step:.3e} FLOP/step)" for s in recipe)
        lines.append(
            f"  paper recipe {model} (released config, {row['covers']}): {parts}: {_h(g)} {unit}, "
            f"{_h(w)} wall-h; the paper: {row['a100_hours']:,} A100-h ({row['gpus']} {row['gpu']} x "
            f"{row['hours']} h), paper / estimate = {row['a100_hours'] / g:.2f}"
        )
    lines.append(
        "  FLOPs: bench.speed.flops (matmuls and convolutions; training 3x the forward of trained modules, "
        "1x frozen ones); hours = FLOPs / (peak x utilisation); data loading, in-training evaluation, "
        "checkpoints and queueing not included"
    )
    return "\n".join(lines)
