"""grid -> cells -> chains of stages; a cell's identity; what is already done.

A cell's identity is a short hash of the settings that determine its results (model, preset recipe, data,
seed; not paths, workers, launcher or cluster), so changing a result-determining setting makes new cells and
changing where or how they run does not. Layout: `<outputs>/<grid>/<cell>-<hash>/<stage>/` and, for what the
cells share (the smoke teacher, real-image statistics), `<outputs>/<grid>/_shared-<hash>/<stage>/`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import models
from bench.core.io import atomic_write_json
from bench.stages import EvalGenSpec, EvalReconSpec, ProbeSpec, ReferenceSpec, SpeedSpec, StageTask
from bench.train.loop import LoopConfig, OptimConfig
from bench.train.recipes import (
    DataConfig,
    GANConfig,
    GeneratorTrainConfig,
    PerceptualConfig,
    Stage1Config,
    Stage2Config,
    TeacherConfig,
    TeacherTrainConfig,
)

SHARED = "_shared"
KNOWN_STAGES = ("stage1", "stage2", "generator", "eval_recon", "eval_gen", "probe", "speed")
EVAL_STAGES = ("reference", "eval_recon", "eval_gen", "probe", "speed")


class PlanError(ValueError):
    """A configuration that cannot make a plan; the message says which value and what to do."""


@dataclass
class Cell:
    name: str
    cell_id: str
    dir: Path
    size: str | None  # encoder size letter (S/B/L)
    num_tokens: int | None
    tokenizer: str  # variant name
    generator: str | None
    tasks: list[StageTask]
    identity: dict  # the settings behind cell_id (logged as params)

    @property
    def done(self) -> bool:
        return all(t.done for t in self.tasks)


@dataclass
class Plan:
    grid: str
    preset: str
    smoke: bool
    root: Path
    shared: list[StageTask]
    cells: list[Cell]
    config: dict  # the resolved sweep config

    def tasks(self) -> list[StageTask]:
        return self.shared + [t for c in self.cells for t in c.tasks]

    def task(self, key: str) -> StageTask:
        return next(t for t in self.tasks() if t.key == key)


def short_hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _optim(d) -> OptimConfig:
    d = dict(d)
    d["betas"] = tuple(d["betas"])
    return OptimConfig(**d)


def _loop(d, seed: int) -> LoopConfig:
    return LoopConfig(seed=seed, **dict(d))


def _positive(cfg: DictConfig, path: str) -> None:
    value = OmegaConf.select(cfg, path)
    if value is not None and (not isinstance(value, int) or value < 1):
        raise PlanError(f"{path}={value!r}: must be a positive integer")


def validate(cfg: DictConfig) -> None:
    """The checks that must fail before anything is submitted (the engine checks again in the jobs)."""
    p = cfg.preset
    for stage in ("teacher", "stage1", "stage2", "generator"):
        if OmegaConf.select(p, f"{stage}.loop") is None:
            continue
        for key in ("steps", "batch_size"):
            _positive(cfg, f"preset.{stage}.loop.{key}")
    for key in ("rfid_images", "gfid_samples", "gfid_reference_images", "probe_train_images", "probe_val_images",
                "batch_size"):
        _positive(cfg, f"preset.eval.{key}")
    for letter, size in p.sizes.items():
        try:
            models.sizes.vit_size(size)
        except ValueError as err:
            raise PlanError(f"preset.sizes.{letter}: {err}") from None
    for letter in cfg.grid.sizes:
        if letter not in p.sizes:
            raise PlanError(f"grid.sizes has model size {letter!r}, which preset {p.name} does not define; known model "
                            f"sizes: {', '.join(p.sizes)}")
    for k in cfg.grid.num_tokens:
        if not isinstance(k, int) or k < 1:
            raise PlanError(f"grid.num_tokens has {k!r}: the number of latent tokens must be a positive integer")
    for name in cfg.grid.models:
        models.resolve(name)  # raises a clear error for an unknown name
    unknown = set(cfg.grid.stages) - set(KNOWN_STAGES)
    if unknown:
        raise PlanError(f"grid.stages has unknown stages {sorted(unknown)}; known: {', '.join(KNOWN_STAGES)}")
    if "stage2" in cfg.grid.stages and "stage1" not in cfg.grid.stages:
        raise PlanError("grid.stages has stage2 without stage1: stage 2 fine-tunes the stage-1 tokenizer")
    if "stage2" in cfg.grid.stages and "stage2" not in p:
        raise PlanError(f"grid.stages has stage2, but preset {p.name} has no stage2 settings")
    if cfg.data.name == "imagenet":
        from bench.data import build_dataset

        for split in ("train", "val"):  # a missing or empty root is a DatasetError naming the path
            build_dataset("imagenet", split=split, image_size=p.image_size, train=False, root=cfg.data.root)
    if cfg.data.name == "synthetic" and cfg.grid.name == "released":
        raise PlanError("grid=released evaluates the released ImageNet models: use data=imagenet data.root=...")


def data_config(cfg: DictConfig, split_images: str) -> DataConfig:
    d = cfg.data
    return DataConfig(name=d.name, root=d.root, image_size=cfg.preset.image_size, num_classes=d.num_classes,
                      num_images=d.get(split_images), num_workers=d.num_workers, seed=cfg.seed)


def _data_identity(cfg: DictConfig) -> dict:
    d = OmegaConf.to_container(cfg.data, resolve=True)
    return {k: v for k, v in d.items() if k not in ("root", "num_workers")}


def make_plan(cfg: DictConfig) -> Plan:
    """Expand the composed sweep config into shared tasks and cells (validated first)."""
    validate(cfg)
    p = cfg.preset
    grid = cfg.grid.name
    root = Path(cfg.outputs).resolve() / grid
    device = p.device
    allow_random = bool(p.allow_random_weights)
    ev = p.eval
    train_data = data_config(cfg, "train_images")
    val_data = data_config(cfg, "val_images")

    # ---- shared stages --------------------------------------------------------------------------------------
    shared_identity = {"data": _data_identity(cfg), "image_size": p.image_size, "seed": cfg.seed,
                       "teacher": OmegaConf.to_container(p.teacher, resolve=True),
                       "eval": {k: ev[k] for k in ("rfid_images", "gfid_reference_images", "reference_batch")},
                       "allow_random_weights": allow_random}
    shared_dir = root / f"{SHARED}-{short_hash(shared_identity)}"
    shared: list[StageTask] = []
    teacher_source = p.teacher.source
    training = any(s in cfg.grid.stages for s in ("stage1", "generator"))
    if training and teacher_source == "train":
        spec = TeacherTrainConfig(overrides=dict(OmegaConf.to_container(p.teacher.overrides, resolve=True)),
                                  data=train_data, optim=_optim(p.teacher.optim), loop=_loop(p.teacher.loop, cfg.seed),
                                  device=device)
        shared.append(StageTask(grid, SHARED, "teacher", str(shared_dir / "teacher"), spec))
        teacher_source = str(shared_dir / "teacher" / "model.safetensors")
    reference_batch = ev.reference_batch
    if reference_batch and not Path(reference_batch).is_file():
        from bench import weights

        reference_batch = str(weights.require(reference_batch))  # MissingWeightsError says where to put it
    reference = StageTask(grid, SHARED, "reference", str(shared_dir / "reference"), ReferenceSpec(
        data=val_data, rfid_images=ev.rfid_images, gfid_reference_images=ev.gfid_reference_images,
        reference_batch=reference_batch, batch_size=ev.batch_size, allow_random_weights=allow_random, device=device),
        resources="eval")
    shared.append(reference)

    # ---- cells ----------------------------------------------------------------------------------------------
    entries = [(f"TiTok-{s}-{k}", s, k) for s in cfg.grid.sizes for k in cfg.grid.num_tokens]
    entries += [(name, None, None) for name in cfg.grid.models]
    ctx = _Shared(root, shared_identity, reference, teacher_source,
                  [f"{SHARED}/teacher"] if any(t.stage == "teacher" for t in shared) else [], train_data, val_data)
    cells = [_make_cell(cfg, name, size, k, ctx) for name, size, k in entries]
    return Plan(grid, p.name, bool(p.smoke), root, shared, cells, OmegaConf.to_container(cfg, resolve=True))


@dataclass(frozen=True)
class _Shared:
    root: Path
    identity: dict
    reference: StageTask
    teacher_source: str
    teacher_needs: list[str]
    train_data: DataConfig
    val_data: DataConfig


def _make_cell(cfg: DictConfig, name: str, size: str | None, k: int | None, ctx: _Shared) -> Cell:
    """One cell: a trained grid cell (size and K given) or a released model evaluated as it is."""
    p, ev, stages = cfg.preset, cfg.preset.eval, cfg.grid.stages
    device, allow_random = p.device, bool(p.allow_random_weights)
    trained = size is not None
    recipe_keys = ("sizes", "tokenizer", "stage1", "generator", "sampler", "eval") + (
        ("stage2",) if "stage2" in stages else ())
    identity = {"model": name, "stages": list(stages), "shared": ctx.identity, "image_size": p.image_size,
                "preset": {key: OmegaConf.to_container(p[key], resolve=True) for key in recipe_keys}}
    if trained:
        identity["size"] = p.sizes[size]
    cell_dir = ctx.root / f"{name}-{short_hash(identity)}"
    tasks: list[StageTask] = []

    def add(stage, spec, needs, resources="train"):
        needs = [n if "/" in n else f"{name}/{n}" for n in needs]
        tasks.append(StageTask(cfg.grid.name, name, stage, str(cell_dir / stage), spec, tuple(needs), resources))

    if trained:
        teacher_overrides = dict(OmegaConf.to_container(p.teacher.overrides, resolve=True))
        overrides = dict(OmegaConf.to_container(p.tokenizer, resolve=True), encoder_size=p.sizes[size],
                         decoder_size=p.sizes[size])
        tokenizer, teacher = str(cell_dir / "stage1" / "model.safetensors"), ctx.teacher_source
        teacher_config = TeacherConfig(ctx.teacher_source, teacher_overrides)
        add("stage1", Stage1Config(
            model=name, model_overrides=overrides, teacher=teacher_config, data=ctx.train_data,
            optim=_optim(p.stage1.optim), loop=_loop(p.stage1.loop, cfg.seed), allow_random_weights=allow_random,
            device=device), ctx.teacher_needs)
        tok_needs = ["stage1"]
        if "stage2" in stages:
            # stage 2 adds the pixel decoder: the cell's tokenizer becomes the stage-2 model, decoding to pixels
            s2 = p.stage2
            gan = OmegaConf.to_container(s2.gan, resolve=True)
            perceptual = PerceptualConfig(**OmegaConf.to_container(s2.perceptual, resolve=True))
            add("stage2", Stage2Config(
                init_from=tokenizer, teacher=teacher_config, perceptual=perceptual,
                gan=GANConfig(**{**gan, "optim": _optim(gan["optim"])}), data=ctx.train_data, optim=_optim(s2.optim),
                loop=_loop(s2.loop, cfg.seed), allow_random_weights=allow_random, device=device),
                ["stage1", *ctx.teacher_needs])
            tokenizer, teacher, tok_needs = str(cell_dir / "stage2" / "model.safetensors"), None, ["stage2"]
        generator = None
        if "generator" in stages:
            generator, g = str(cell_dir / "generator" / "model.safetensors"), p.generator
            # the encoder is frozen in stage 2: the stage-1 model's tokens are the cell's tokens
            add("generator", GeneratorTrainConfig(
                tokenizer=str(cell_dir / "stage1" / "model.safetensors"), model=g.model,
                model_overrides=dict(OmegaConf.to_container(g.overrides)),
                label_smoothing=g.label_smoothing, unmasked_weight=g.unmasked_weight, data=ctx.train_data,
                optim=_optim(g.optim), loop=_loop(g.loop, cfg.seed), device=device), ["stage1"])
        gen_needs = [*tok_needs, "generator"]
    else:
        tokenizer, teacher, generator = name, None, models.VARIANTS[name].generator
        tok_needs, gen_needs = [], []
    sampler = dict(OmegaConf.to_container(p.sampler, resolve=True))
    ref = ctx.reference
    if "eval_recon" in stages:
        add("eval_recon", EvalReconSpec(
            tokenizer=tokenizer, reference_dir=ref.out_dir, data=ctx.val_data, num_images=ev.rfid_images,
            teacher=teacher, batch_size=ev.batch_size, lpips=ev.lpips, fid_method=ev.fid_method,
            allow_random_weights=allow_random, device=device), tok_needs + [ref.key], "eval")
    if generator and "eval_gen" in stages:
        add("eval_gen", EvalGenSpec(
            generator=generator, tokenizer=tokenizer, reference_dir=ref.out_dir, num_samples=ev.gfid_samples,
            num_classes=cfg.data.num_classes, model_name=name, teacher=teacher, sampler=sampler, seed=cfg.seed,
            batch_size=ev.batch_size, fid_method=ev.fid_method, clean_fid=ev.clean_fid,
            allow_random_weights=allow_random, device=device), gen_needs + [ref.key], "eval")
    if "probe" in stages:
        add("probe", ProbeSpec(tokenizer=tokenizer, data=ctx.val_data, num_train=ev.probe_train_images,
                               num_val=ev.probe_val_images, epochs=ev.probe_epochs, batch_size=ev.batch_size,
                               device=device), tok_needs, "eval")
    if generator and "speed" in stages:
        sp = ev.speed
        add("speed", SpeedSpec(tokenizer=tokenizer, generator=generator, teacher=teacher, batch_size=sp.batch_size,
                               repeats=sp.repeats, warmup=sp.warmup, sampler=sampler, mode=sp.mode,
                               allow_random_weights=allow_random, device=device), gen_needs, "eval")
    return Cell(name, cell_dir.name.rsplit("-", 1)[1], cell_dir, size, k, name, generator, tasks, identity)


def describe(plan: Plan) -> str:
    """The dry-run view: cells, stages, resources, and what is already done."""
    lines = [f"grid {plan.grid}  preset {plan.preset}{'  (smoke)' if plan.smoke else ''}  outputs {plan.root}"]
    for t in plan.shared:
        lines.append(f"  {t.key:<28} {'done' if t.done else 'todo':<5} {t.resources:<5} {t.out_dir}")
    stages = [s for s in KNOWN_STAGES if any(t.stage == s for c in plan.cells for t in c.tasks)]
    lines.append("  " + f"{'cell':<22}{'id':<10}" + "".join(f"{s:<11}" for s in stages))
    for c in plan.cells:
        have = {t.stage: t for t in c.tasks}
        marks = "".join(f"{('done' if have[s].done else 'todo') if s in have else '-':<11}" for s in stages)
        lines.append(f"  {c.name:<22}{c.cell_id:<10}{marks}")
    todo = [t for t in plan.tasks() if not t.done]
    lines.append(f"{len(plan.cells)} cells, {len(plan.tasks())} stages, {len(todo)} to run")
    return "\n".join(lines)


def write_plan(plan: Plan) -> Path:
    plan.root.mkdir(parents=True, exist_ok=True)
    path = plan.root / "plan.json"
    data = {"grid": plan.grid, "preset": plan.preset, "config": plan.config,
            "cells": {c.name: {"id": c.cell_id, "dir": str(c.dir), "stages": [t.stage for t in c.tasks]}
                      for c in plan.cells}}
    return atomic_write_json(path, data)
