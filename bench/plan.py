"""The plan of a sweep: the composed config, validated -> shared stages and cells, each stage a `StageTask` whose
spec and identity come from its stage module (bench/stages: `plan` builds the spec from the preset and the cell,
bench/stages/planning.py; RULE says which of its settings count). A stage's identity hashes its result-determining
settings and the identities of the stages it reads, so an evaluation setting re-runs that evaluation only and a
training setting that stage and what reads it.

Layout under `<outputs>/<grid>/`:
    _shared/<stage>-<identity>/   what the cells share: the smoke teacher, the real-image statistics (rFID), the
                                  reference batch (gFID)
    <cell>/<stage>-<identity>/    a cell's stages: spec.json, result.json, checkpoints, model.safetensors, samples
    <cell>/run-<cell id>/         the cell's MLflow run record and buffer. The cell id hashes the identities of
                                  the cell's training stages (a released model: its name), so evaluation settings
                                  never change it (their results land in the same run) and a retrained cell gets
                                  its own run.
    plan.json, jobs.jsonl, mlflow_run.json (the sweep's run), submitit/
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import models
from bench.core.dist import check_device
from bench.core.io import atomic_write_json
from bench.stages import STAGES, StageTask, new_task
from bench.stages.base import short_hash
from bench.stages.planning import SHARED, PlanContext, PlanError, unknown_key
from bench.train.recipes import DataConfig

# what a grid may list (the stages that are not shared), in pipeline order
KNOWN_STAGES = tuple(name for name, m in STAGES.items() if not getattr(m, "SHARED", False))
# the preset's sections that become settings dataclasses or model configs (paths under preset; each stage module's
# PRESET): a key they do not have (a typo, or one added with `+`) fails here with the closest known name, not as a
# TypeError in a job
PRESET_SECTIONS = {path: cls for m in STAGES.values() for path, cls in getattr(m, "PRESET", {}).items()}


@dataclass
class Cell:
    name: str
    cell_id: str
    dir: Path  # <grid>/<cell>: its stages' folders
    run_dir: Path  # <grid>/<cell>/run-<cell id>: its MLflow run record
    size: str | None  # encoder size letter (S/B/L)
    num_tokens: int | None
    tokenizer: str  # variant name
    generator: str | None
    tasks: list[StageTask]
    params: dict  # the training settings behind cell_id (logged as the run's params)

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


def _positive(cfg: DictConfig, path: str) -> None:
    value = OmegaConf.select(cfg, path)
    if value is not None and (not isinstance(value, int) or value < 1):
        raise PlanError(f"{path}={value!r}: must be a positive integer")


def _check_keys(p: DictConfig) -> None:
    for path, cls in PRESET_SECTIONS.items():
        node = OmegaConf.select(p, path)
        known = [f.name for f in dataclasses.fields(cls)]
        for key in node.keys() if isinstance(node, DictConfig) else ():
            if key not in known:
                raise PlanError(unknown_key(f"preset.{path}", key, known))


def check_cluster(cluster: DictConfig) -> None:
    """The cluster request: a multi-GPU stage runs one process per GPU, so a GPU cluster's tasks_per_node must be
    its gpus_per_node (fewer tasks leave GPUs idle, yet paid for; more fail with "invalid device ordinal")."""
    gpus, tasks = cluster.get("gpus_per_node") or 0, cluster.get("tasks_per_node")
    if gpus and tasks != gpus:
        raise PlanError(
            f"cluster.tasks_per_node={tasks} but cluster.gpus_per_node={gpus}: a stage runs one process "
            f"per GPU; set cluster.tasks_per_node={gpus} (or cluster.gpus_per_node={tasks})"
        )
    timeout = cluster.get("process_group_timeout_min")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
        raise PlanError(
            f"cluster.process_group_timeout_min={timeout!r}: a positive number of minutes, or null for "
            "the job's time limit"
        )


def validate(cfg: DictConfig) -> None:
    """The checks that must fail before anything is submitted (the engine checks again in the jobs)."""
    p = cfg.preset
    _check_keys(p)
    check_cluster(cfg.cluster)
    try:
        check_device(p.device)
    except ValueError as err:
        raise PlanError(f"preset.device: {err}") from None
    for loop in (path for path in PRESET_SECTIONS if path.endswith(".loop")):
        for key in ("steps", "batch_size"):
            _positive(cfg, f"preset.{loop}.{key}")
    _positive(cfg, "preset.generator.train_images")
    for key in (
        "rfid_images",
        "gfid_samples",
        "gfid_reference_images",
        "probe_train_images",
        "probe_val_images",
        "batch_size",
    ):
        _positive(cfg, f"preset.eval.{key}")
    for key in ("bootstrap", "gallery_images"):  # 0 turns the intervals / the gallery off
        value = OmegaConf.select(cfg, f"preset.eval.{key}")
        if value is not None and (not isinstance(value, int) or value < 0):
            raise PlanError(f"preset.eval.{key}={value!r}: must be 0 (off) or a positive integer")
    from bench.eval.probe import check_features

    try:
        check_features(p.eval.probe_features)
    except ValueError as err:
        raise PlanError(f"preset.eval.probe_features: {err}") from None
    for letter, size in p.sizes.items():
        try:
            models.sizes.vit_size(size)
        except ValueError as err:
            raise PlanError(f"preset.sizes.{letter}: {err}") from None
    for letter in cfg.grid.sizes:
        if letter not in p.sizes:
            raise PlanError(
                f"grid.sizes has model size {letter!r}, which preset {p.name} does not define; known model "
                f"sizes: {', '.join(p.sizes)}"
            )
    for k in cfg.grid.num_tokens:
        if not isinstance(k, int) or k < 1:
            raise PlanError(f"grid.num_tokens has {k!r}: the number of latent tokens must be a positive integer")
    for name in cfg.grid.models:
        models.resolve(name)  # raises a clear error for an unknown name
    source = str(p.teacher.source)
    # the rule bench.core.loading applies: a source that looks like a path must exist (else it is a name)
    if models.pretrained.looks_like_path(source) and not Path(source).expanduser().exists():
        raise PlanError(
            f"preset.teacher.source={source}: no such file (the tiny preset's is rebuilt by "
            "`python -m bench.tiny_teacher`); or preset.teacher.source=train to train it in the run"
        )
    unknown = set(cfg.grid.stages) - set(KNOWN_STAGES)
    if unknown:
        raise PlanError(f"grid.stages has unknown stages {sorted(unknown)}; known: {', '.join(KNOWN_STAGES)}")
    for name in KNOWN_STAGES:
        if name in cfg.grid.stages and hasattr(STAGES[name], "check"):
            STAGES[name].check(cfg)
    if cfg.data.name == "imagenet":
        from bench.data import build_dataset

        for split in ("train", "val"):  # a missing or empty root, or too few classes: a DatasetError naming the path
            build_dataset(
                "imagenet",
                split=split,
                image_size=p.image_size,
                train=False,
                root=cfg.data.root,
                num_classes=cfg.data.num_classes,
            )
    if cfg.data.name == "imagenet_wds":
        from bench.data.shards import check_shards

        if cfg.data.get("train_images") is not None:
            raise PlanError(
                f"data.train_images={cfg.data.train_images}: shards are streamed whole, so training "
                "cannot take a subset; set data.train_images=null and name fewer shards in "
                "data.train_shards"
            )
        # no shard matches, an unreadable shard, a first sample without an image or a class: one line each
        check_shards(
            cfg.data.train_shards, "data.train_shards", cfg.data.num_classes, local_only="probe" in cfg.grid.stages
        )  # the probe reads training images by random access
        check_shards(cfg.data.val_shards, "data.val_shards", cfg.data.num_classes, local_only=True)
    if cfg.data.name == "synthetic" and cfg.grid.name == "released":
        raise PlanError("grid=released evaluates the released ImageNet models: use data=imagenet data.root=...")


def data_config(cfg: DictConfig, split_images: str) -> DataConfig:
    d = cfg.data
    return DataConfig(
        name=d.name,
        root=d.root,
        image_size=cfg.preset.image_size,
        num_classes=d.num_classes,
        num_images=d.get(split_images),
        num_workers=d.num_workers,
        seed=cfg.seed,
        train_shards=d.get("train_shards"),
        val_shards=d.get("val_shards"),
    )


def _generator_data(cfg: DictConfig, train_data: DataConfig) -> DataConfig:
    """preset.generator.train_images: the generator (and its pretokenized tokens) read only the first N training
    images, so a CPU smoke run does not encode a split its short schedule never reaches (null: all of it). Streamed
    shards cannot be cut: there it is ignored, with a warning."""
    limit = OmegaConf.select(cfg.preset, "generator.train_images")
    if limit is None:
        return train_data
    if cfg.data.name == "imagenet_wds":
        warnings.warn(
            f"preset.generator.train_images={limit} is ignored: shards are streamed whole, so the "
            "generator reads every training shard",
            stacklevel=2,
        )
        return train_data
    return dataclasses.replace(train_data, num_images=min(limit, train_data.num_images or limit))


def make_plan(cfg: DictConfig) -> Plan:
    """Expand the composed sweep config into shared tasks and cells (validated first; nothing is written)."""
    validate(cfg)
    p = cfg.preset
    root = Path(cfg.outputs).resolve() / cfg.grid.name
    train_data = data_config(cfg, "train_images")
    ctx = PlanContext(cfg, train_data, _generator_data(cfg, train_data), data_config(cfg, "val_images"))
    shared = _plan_stages(ctx, root / SHARED, shared=True)
    entries = [(f"TiTok-{s}-{k}", s, k) for s in cfg.grid.sizes for k in cfg.grid.num_tokens]
    entries += [(name, None, None) for name in cfg.grid.models]
    cells = [_make_cell(dataclasses.replace(ctx, name=n, size=s, num_tokens=k, tasks={}), root) for n, s, k in entries]
    return Plan(cfg.grid.name, p.name, bool(p.smoke), root, shared, cells, OmegaConf.to_container(cfg, resolve=True))


def _plan_stages(c: PlanContext, folder: Path, shared: bool) -> list[StageTask]:
    """The shared stages, or a cell's: each stage module builds its spec (`plan`), in pipeline order so that a
    stage sees the tasks it reads."""
    planned = c.shared if shared else c.tasks
    for name, module in STAGES.items():
        if getattr(module, "SHARED", False) != shared or (made := module.plan(c)) is None:
            continue
        spec, reads = made
        planned[name] = new_task(c.cfg.grid.name, c.name, name, spec, folder, reads)
    return list(planned.values())


def _make_cell(c: PlanContext, root: Path) -> Cell:
    """One cell: a trained grid cell (size and K given), a single-stage tokenizer trained from scratch (a name of
    grid.models with the `single` stage) or a released model evaluated as it is. Its id hashes the settings of its
    training stages."""
    tasks = _plan_stages(c, root / c.name, shared=False)
    training = [t for t in tasks if t.resources == "train"]
    params = {
        "model": c.name,
        "allow_random_weights": c.allow_random,
        **{t.stage: {"identity": t.identity, **STAGES[t.stage].RULE.settings(t.spec)} for t in training},
    }
    cell_id = short_hash(params)
    cell_dir = root / c.name
    return Cell(
        c.name,
        cell_id,
        cell_dir,
        cell_dir / f"run-{cell_id}",
        c.size,
        c.num_tokens,
        c.name,
        c.generator,
        tasks,
        dict(params, cell_id=cell_id),
    )


def describe(plan: Plan, cost: bool = False) -> str:
    """The dry-run view: cells, stages, resources, and what is already done; with `cost`, the estimate on the
    configured cluster beside the paper's hours (bench.cost)."""
    lines = [f"grid {plan.grid}  preset {plan.preset}{'  (smoke)' if plan.smoke else ''}  outputs {plan.root}"]
    for t in plan.shared:
        lines.append(f"  {t.uid:<36} {'done' if t.done else 'todo':<5} {t.resources:<5} {t.out_dir}")
    stages = [s for s in KNOWN_STAGES if any(t.stage == s for c in plan.cells for t in c.tasks)]
    width = max(map(len, stages), default=0) + 2  # a column wider than its longest name (pretokenize)
    lines.append("  " + f"{'cell':<22}{'id':<10}" + "".join(f"{s:<{width}}" for s in stages))
    for c in plan.cells:
        have = {t.stage: t for t in c.tasks}
        marks = "".join(f"{('done' if have[s].done else 'todo') if s in have else '-':<{width}}" for s in stages)
        lines.append(f"  {c.name:<22}{c.cell_id:<10}{marks}")
    todo = [t for t in plan.tasks() if not t.done]
    lines.append(f"{len(plan.cells)} cells, {len(plan.tasks())} stages, {len(todo)} to run")
    if cost:
        from bench import cost as C

        try:
            lines.append(C.describe_cost(plan, C.device_from_cluster(plan.config["cluster"])))
        except C.CostError as err:  # a dry run still shows the plan
            lines.append(f"cost estimate: not available: {err}")
    return "\n".join(lines)


def write_plan(plan: Plan) -> Path:
    data = {
        "grid": plan.grid,
        "preset": plan.preset,
        "config": plan.config,
        "shared": {t.stage: t.identity for t in plan.shared},
        "cells": {
            c.name: {
                "id": c.cell_id,
                "dir": str(c.dir),
                "run_dir": str(c.run_dir),
                "stages": {t.stage: t.identity for t in c.tasks},
            }
            for c in plan.cells
        },
    }
    return atomic_write_json(plan.root / "plan.json", data)
