"""The plan of a sweep: the composed config -> shared stages and cells, each stage a `StageTask` whose spec is built
from the config here and whose identity comes from its stage module (bench/stages: each says which of its settings
count). A stage's identity hashes its result-determining settings and the identities of the stages it reads, so
an evaluation setting re-runs that evaluation only and a training setting that stage and what reads it.

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
import difflib
import warnings
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import models
from bench.core.dist import check_device
from bench.core.io import atomic_write_json
from bench.stages import (
    STAGES,
    EvalGenSpec,
    EvalReconSpec,
    ProbeSpec,
    RealStatsSpec,
    ReferenceBatchSpec,
    SpeedSpec,
    StageTask,
    new_task,
)
from bench.stages.base import short_hash
from bench.train.recipes import (
    DataConfig,
    GANConfig,
    GeneratorTrainConfig,
    LoopConfig,
    OptimConfig,
    PerceptualConfig,
    SingleStageConfig,
    Stage1Config,
    Stage2Config,
    TeacherConfig,
    TeacherTrainConfig,
    gan_from,
    loop_from,
    optim_from,
)

SHARED = "_shared"
# what a grid may list, in pipeline order
KNOWN_STAGES = ("stage1", "stage2", "single", "pretokenize", "generator", "eval_recon", "eval_gen", "probe", "speed")


class PlanError(ValueError):
    """A configuration that cannot make a plan; the message says which value and what to do."""


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


def _container(node) -> dict:
    return dict(OmegaConf.to_container(node, resolve=True))


def _positive(cfg: DictConfig, path: str) -> None:
    value = OmegaConf.select(cfg, path)
    if value is not None and (not isinstance(value, int) or value < 1):
        raise PlanError(f"{path}={value!r}: must be a positive integer")


# the preset's sections that become settings dataclasses or model configs (paths under preset): a key they do not
# have (a typo, or one added with `+`) fails here with the closest known name, not as a TypeError in a job
_SETTINGS = {
    **{
        f"{stage}.{part}": cls
        for stage in ("teacher", "stage1", "stage2", "generator")
        for part, cls in (("loop", LoopConfig), ("optim", OptimConfig))
    },
    "stage2.gan": GANConfig,
    "stage2.gan.optim": OptimConfig,
    "stage2.perceptual": PerceptualConfig,
    "tokenizer": models.TiTokConfig,
    "teacher.overrides": models.VQGANConfig,
    "generator.overrides": models.GeneratorConfig,
    "sampler": models.SamplerSettings,
    "single.loop": LoopConfig,
    "single.optim": OptimConfig,
    "single.gan": GANConfig,
    "single.gan.optim": OptimConfig,
    "single.perceptual": PerceptualConfig,
    "single.tokenizer": models.TiTokConfig,
}


def unknown_key(parent: str, key: str, known: list[str]) -> str:
    """The message for a config key `parent.key` that is not one of `known`, with the closest known name."""
    prefix = f"{parent}." if parent else ""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {prefix}{close[0]}? " if close else ""
    where = f"known under {parent or 'the top level'}: {', '.join(known)}" if known else "check the spelling"
    return f"{prefix}{key}: the config has no such key; {hint}{where}"


def _check_keys(p: DictConfig) -> None:
    for path, cls in _SETTINGS.items():
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
    for stage in ("teacher", "stage1", "stage2", "generator"):
        if OmegaConf.select(p, f"{stage}.loop") is None:
            continue
        for key in ("steps", "batch_size"):
            _positive(cfg, f"preset.{stage}.loop.{key}")
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
    if models.checkpoints.looks_like_path(source) and not Path(source).expanduser().exists():
        raise PlanError(
            f"preset.teacher.source={source}: no such file (the tiny preset's is rebuilt by "
            "`python -m bench.tiny_teacher`); or preset.teacher.source=train to train it in the run"
        )
    unknown = set(cfg.grid.stages) - set(KNOWN_STAGES)
    if unknown:
        raise PlanError(f"grid.stages has unknown stages {sorted(unknown)}; known: {', '.join(KNOWN_STAGES)}")
    if "stage2" in cfg.grid.stages and "stage1" not in cfg.grid.stages:
        raise PlanError("grid.stages has stage2 without stage1: stage 2 fine-tunes the stage-1 tokenizer")
    if "stage2" in cfg.grid.stages and "stage2" not in p:
        raise PlanError(f"grid.stages has stage2, but preset {p.name} has no stage2 settings")
    if "single" in cfg.grid.stages:
        _check_single(cfg)
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


def _check_single(cfg: DictConfig) -> None:
    """grid.stages with `single`: each name of grid.models is a single-stage tokenizer trained from scratch."""
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
        c = models.resolve(name).config
        if getattr(c, "two_stage", True):
            raise PlanError(
                f"grid.models has {name}, a two-stage tokenizer, but the single stage trains single-stage "
                "ones (TiTok-{XY}-{K}-{VQ,VAE}); train two-stage cells with stage1 and stage2"
            )
        for part in ("encoder_size", "decoder_size"):
            if getattr(c, part) not in p.sizes:
                raise PlanError(
                    f"{name}: its {part} {getattr(c, part)!r} is not in preset.sizes of preset {p.name} "
                    f"(known: {', '.join(p.sizes)})"
                )


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


@dataclass(frozen=True)
class _Shared:
    """What every cell reads from the shared stages."""

    teacher: StageTask | None  # the trained smoke teacher, or None: teacher_source is a name or file
    teacher_source: str
    real_stats: StageTask | None
    reference_batch: StageTask | None
    train_data: DataConfig
    generator_data: DataConfig  # what the generator and its pretokenized tokens read (_generator_data)
    val_data: DataConfig


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
    p, ev, stages = cfg.preset, cfg.preset.eval, cfg.grid.stages
    grid = cfg.grid.name
    root = Path(cfg.outputs).resolve() / grid
    device, allow_random = p.device, bool(p.allow_random_weights)
    train_data, val_data = data_config(cfg, "train_images"), data_config(cfg, "val_images")
    shared: list[StageTask] = []

    def add_shared(stage: str, spec, **inputs) -> StageTask:
        shared.append(new_task(grid, SHARED, stage, spec, root / SHARED, inputs))
        return shared[-1]

    teacher = None
    if cfg.grid.sizes and cfg.grid.num_tokens and p.teacher.source == "train":  # every trained cell has a stage 1
        teacher = add_shared(
            "teacher",
            TeacherTrainConfig(
                overrides=_container(p.teacher.overrides),
                data=train_data,
                optim=optim_from(_container(p.teacher.optim)),
                loop=loop_from(_container(p.teacher.loop), cfg.seed),
                device=device,
            ),
        )
    real_stats = reference_batch = None
    if "eval_recon" in stages:
        real_stats = add_shared(
            "real_stats",
            RealStatsSpec(
                data=val_data,
                num_images=ev.rfid_images,
                allow_random_weights=allow_random,
                batch_size=ev.batch_size,
                inception_dtype=ev.rfid_inception_dtype,
                device=device,
            ),
        )
    if "eval_gen" in stages:
        source = ev.reference_batch
        if source and not Path(source).is_file():
            from bench import weights

            source = str(weights.require(source))  # MissingWeightsError says where to put it
        reference_batch = add_shared(
            "reference_batch",
            ReferenceBatchSpec(
                data=val_data,
                num_images=ev.gfid_reference_images,
                source=source,
                allow_random_weights=allow_random,
                batch_size=ev.batch_size,
                device=device,
            ),
        )
    ctx = _Shared(
        teacher,
        teacher.product if teacher else p.teacher.source,
        real_stats,
        reference_batch,
        train_data,
        _generator_data(cfg, train_data),
        val_data,
    )
    entries = [(f"TiTok-{s}-{k}", s, k) for s in cfg.grid.sizes for k in cfg.grid.num_tokens]
    entries += [(name, None, None) for name in cfg.grid.models]
    cells = [_make_cell(cfg, root, name, size, k, ctx) for name, size, k in entries]
    return Plan(grid, p.name, bool(p.smoke), root, shared, cells, OmegaConf.to_container(cfg, resolve=True))


def _single_stage_config(cfg: DictConfig, name: str, data: DataConfig) -> SingleStageConfig:
    """The single stage of the single-stage tokenizer `name`: its architecture (encoder and decoder sizes through
    preset.sizes, preset.single.tokenizer's overrides) and preset.single's recipe."""
    p, s = cfg.preset, cfg.preset.single
    c = models.resolve(name).config
    overrides = dict(
        _container(s.tokenizer), encoder_size=p.sizes[c.encoder_size], decoder_size=p.sizes[c.decoder_size]
    )
    return SingleStageConfig(
        model=name,
        model_overrides=overrides,
        quantizer_weight=s.quantizer_weight,
        kl_weight=s.kl_weight,
        perceptual=PerceptualConfig(**_container(s.perceptual)),
        gan=gan_from(_container(s.gan)),
        data=data,
        optim=optim_from(_container(s.optim)),
        loop=loop_from(_container(s.loop), cfg.seed),
        allow_random_weights=bool(p.allow_random_weights),
        device=p.device,
    )


def _make_cell(cfg: DictConfig, root: Path, name: str, size: str | None, k: int | None, ctx: _Shared) -> Cell:
    """One cell: a trained grid cell (size and K given), a single-stage tokenizer trained from scratch (a name of
    grid.models with the `single` stage) or a released model evaluated as it is."""
    p, ev, stages = cfg.preset, cfg.preset.eval, cfg.grid.stages
    device, allow_random = p.device, bool(p.allow_random_weights)
    cell_dir = root / name
    tasks: list[StageTask] = []

    def add(stage: str, spec, **inputs) -> StageTask:
        tasks.append(new_task(cfg.grid.name, name, stage, spec, cell_dir, inputs))
        return tasks[-1]

    # the tokenizer the evaluations read (and its teacher), the generator: tasks of this cell, or released names;
    # encoder_task: the trained stage whose encoder gives the cell's tokens (stage 1, or the single stage)
    tok_task = gen_task = teacher_task = encoder_task = None
    if size is not None:
        teacher_config = TeacherConfig(source=ctx.teacher_source, overrides=_container(p.teacher.overrides))
        overrides = dict(_container(p.tokenizer), encoder_size=p.sizes[size], decoder_size=p.sizes[size])
        tok_task = stage1 = add(
            "stage1",
            Stage1Config(
                model=name,
                model_overrides=overrides,
                teacher=teacher_config,
                data=ctx.train_data,
                optim=optim_from(_container(p.stage1.optim)),
                loop=loop_from(_container(p.stage1.loop), cfg.seed),
                decoder_warmup_fraction=p.stage1.decoder_warmup_fraction,
                continuous_fraction=p.stage1.continuous_fraction,
                allow_random_weights=allow_random,
                device=device,
            ),
            teacher=ctx.teacher,
        )
        teacher_task, teacher = ctx.teacher, ctx.teacher_source
        if "stage2" in stages:
            # stage 2 adds the pixel decoder: the cell's tokenizer becomes the stage-2 model, decoding to pixels
            s2 = p.stage2
            tok_task = add(
                "stage2",
                Stage2Config(
                    init_from=stage1.product,
                    teacher=teacher_config,
                    perceptual=PerceptualConfig(**_container(s2.perceptual)),
                    gan=gan_from(_container(s2.gan)),
                    data=ctx.train_data,
                    optim=optim_from(_container(s2.optim)),
                    loop=loop_from(_container(s2.loop), cfg.seed),
                    allow_random_weights=allow_random,
                    device=device,
                ),
                stage1=stage1,
                teacher=ctx.teacher,
            )
            teacher_task, teacher = None, None
        encoder_task = stage1
    elif "single" in stages:
        tok_task = encoder_task = add("single", _single_stage_config(cfg, name, ctx.train_data))
        teacher_task, teacher = None, None
    # a VAE's tokens are continuous: no MaskGIT generator (nor its tokens) for it
    makes_ids = encoder_task is not None and (size is not None or models.resolve(name).config.quantizer == "vq")
    if encoder_task is not None:
        if "pretokenize" in stages and "generator" not in stages:
            raise PlanError("grid.stages has pretokenize without generator: its tokens are the generator's input")
        tokens_task = None
        if "pretokenize" in stages and makes_ids:
            from bench.train.recipes import PretokenizeConfig

            # preset.pretokenize: crops, precision, batch_size, shard_size (PretokenizeConfig's defaults if absent)
            settings = _container(p.pretokenize) if OmegaConf.select(p, "pretokenize") is not None else {}
            known = [
                f.name for f in dataclasses.fields(PretokenizeConfig) if f.name not in ("tokenizer", "data", "device")
            ]
            for key in settings:
                if key not in known:
                    raise PlanError(unknown_key("preset.pretokenize", key, known))
            tokens_task = add(
                "pretokenize",
                PretokenizeConfig(tokenizer=encoder_task.product, data=ctx.generator_data, device=device, **settings),
                tokenizer=encoder_task,
            )
        if "generator" in stages and makes_ids:
            g = p.generator
            # the encoder is frozen in stage 2: the stage-1 model's tokens are the cell's tokens
            gen_task = add(
                "generator",
                GeneratorTrainConfig(
                    tokenizer=encoder_task.product,
                    tokens=tokens_task.product if tokens_task else None,
                    model=g.model,
                    model_overrides=_container(g.overrides),
                    label_smoothing=g.label_smoothing,
                    unmasked_weight=g.unmasked_weight,
                    data=ctx.generator_data,
                    optim=optim_from(_container(g.optim)),
                    loop=loop_from(_container(g.loop), cfg.seed),
                    allow_random_weights=allow_random,
                    device=device,
                ),
                tokenizer=encoder_task,
                tokens=tokens_task,
            )
        tokenizer, generator = tok_task.product, gen_task.product if gen_task else None
    else:
        tokenizer, teacher, generator = name, None, models.VARIANTS[name].generator
    sampler = _container(p.sampler)
    reads_tokens = dict(tokenizer=tok_task, teacher=teacher_task)
    if "eval_recon" in stages:
        add(
            "eval_recon",
            EvalReconSpec(
                tokenizer=tokenizer,
                real_stats=ctx.real_stats.product,
                data=ctx.val_data,
                num_images=ev.rfid_images,
                teacher=teacher,
                lpips=ev.lpips,
                fid_method=ev.fid_method,
                inception_dtype=ev.rfid_inception_dtype,
                allow_random_weights=allow_random,
                bootstrap=ev.bootstrap,
                gallery=ev.gallery_images,
                batch_size=ev.batch_size,
                device=device,
            ),
            **reads_tokens,
            real_stats=ctx.real_stats,
        )
    if generator and "eval_gen" in stages:
        add(
            "eval_gen",
            EvalGenSpec(
                generator=generator,
                tokenizer=tokenizer,
                reference_batch=ctx.reference_batch.product,
                num_samples=ev.gfid_samples,
                num_classes=cfg.data.num_classes,
                teacher=teacher,
                sampler=sampler,
                seed=cfg.seed,
                fid_method=ev.fid_method,
                clean_fid=ev.clean_fid,
                allow_random_weights=allow_random,
                bootstrap=ev.bootstrap,
                batch_size=ev.batch_size,
                model_name=name,
                device=device,
            ),
            generator=gen_task,
            **reads_tokens,
            reference_batch=ctx.reference_batch,
        )
    if "probe" in stages:
        add(
            "probe",
            ProbeSpec(
                tokenizer=tokenizer,
                data=ctx.val_data,
                num_train=ev.probe_train_images,
                num_val=ev.probe_val_images,
                epochs=ev.probe_epochs,
                features=ev.probe_features,
                allow_random_weights=allow_random,
                batch_size=ev.batch_size,
                device=device,
            ),
            tokenizer=tok_task,
        )
    # a trained single-stage cell without a generator: the speed of its encode and decode
    if (generator or "single" in stages) and "speed" in stages:
        sp = ev.speed
        add(
            "speed",
            SpeedSpec(
                tokenizer=tokenizer,
                generator=generator,
                teacher=teacher,
                batch_size=sp.batch_size,
                repeats=sp.repeats,
                warmup=sp.warmup,
                sampler=sampler,
                mode=sp.mode,
                allow_random_weights=allow_random,
                device=device,
            ),
            generator=gen_task,
            **reads_tokens,
        )
    training = [t for t in tasks if t.resources == "train"]
    params = {
        "model": name,
        "allow_random_weights": allow_random,
        **{t.stage: {"identity": t.identity, **STAGES[t.stage].RULE.settings(t.spec)} for t in training},
    }
    cell_id = short_hash(params)
    return Cell(
        name,
        cell_id,
        cell_dir,
        cell_dir / f"run-{cell_id}",
        size,
        k,
        name,
        generator,
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
