"""One function per stage of a sweep, calling the engine (bench/train, bench/eval, bench/speed).

A `StageTask` is everything one stage of one cell needs: its spec (a dataclass), its output folder and the
tasks it depends on. `run_task` is idempotent: a stage whose `result.json` exists is skipped; an interrupted
training stage resumes from the checkpoint in its folder. Metrics and tags go to the cell's MLflow run
through `bench.tracking.RunLogger` (which never fails the job).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import tracking as T
from bench.core import dist as D
from bench.core.io import atomic_write_json
from bench.train.recipes import (
    DataConfig,
    GeneratorTrainConfig,
    SingleStageConfig,
    Stage1Config,
    Stage2Config,
    TeacherTrainConfig,
)

RESULT = "result.json"
TRAINING_STAGES = ("teacher", "stage1", "stage2", "single", "generator")


# ---- specs of the evaluation stages (the training stages use bench.train.recipes) ---------------------------
@dataclass(frozen=True)
class ReferenceSpec:
    """Real-image statistics shared by a grid's cells: pool-feature stats for rFID and a reference batch for
    gFID (made from the data, or an ADM reference batch file such as VIRTUAL_imagenet256_labeled.npz)."""

    data: DataConfig
    rfid_images: int
    gfid_reference_images: int
    reference_batch: str | None = None  # an existing ADM .npz; None: make one from the val split
    batch_size: int = 64
    allow_random_weights: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class EvalReconSpec:
    tokenizer: str
    reference_dir: str
    data: DataConfig
    num_images: int
    teacher: str | None = None  # decodes stage-1-form tokenizers' proxy codes
    batch_size: int = 64
    lpips: bool = True
    fid_method: str = "sqrtm"  # "sqrtm" (scipy, as the reference) or "eigh" (agrees to ~1e-6, much faster on CPUs)
    allow_random_weights: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class EvalGenSpec:
    generator: str
    tokenizer: str
    reference_dir: str
    num_samples: int
    num_classes: int
    model_name: str  # for the sample file name
    teacher: str | None = None
    sampler: dict = field(default_factory=dict)  # overrides of the generator's sampler settings
    seed: int = 42
    batch_size: int = 64
    fid_method: str = "sqrtm"
    clean_fid: bool = True  # clean-fid's FID as a second backend (its own scipy sqrtm: ~20 s on 2 CPU cores)
    allow_random_weights: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class ProbeSpec:
    tokenizer: str
    data: DataConfig
    num_train: int
    num_val: int
    epochs: int = 100
    batch_size: int = 64
    device: str = "auto"


@dataclass(frozen=True)
class SpeedSpec:
    tokenizer: str
    generator: str
    teacher: str | None = None
    batch_size: int = 8
    repeats: int = 3
    warmup: int = 1
    sampler: dict = field(default_factory=dict)
    mode: str = "fast"
    allow_random_weights: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class StageTask:
    grid: str
    cell: str  # the cell name, or "_shared"
    stage: str
    out_dir: str
    spec: object
    needs: tuple[str, ...] = ()  # keys ("cell/stage") of the tasks that must finish first
    resources: str = "train"  # "train" | "eval": picks the cluster's time limit
    threads: int | None = None

    @property
    def key(self) -> str:
        return f"{self.cell}/{self.stage}"

    @property
    def done(self) -> bool:
        return (Path(self.out_dir) / RESULT).is_file()

    def result(self) -> dict | None:
        path = Path(self.out_dir) / RESULT
        return json.loads(path.read_text()) if path.is_file() else None


@dataclass(frozen=True)
class Tracking:
    """Where a cell logs: the store, its run (None for shared stages: they log into the sweep's run) and the
    buffer file for outages."""

    uri: str
    run_id: str
    buffer: str

    def logger(self) -> T.RunLogger:
        return T.RunLogger(self.uri, self.run_id, self.buffer)


# ---- the stage functions ----------------------------------------------------------------------------------------
Runner = Callable[[object, Path, Callable[[dict, int], None], D.DistInfo], dict]


def _train(fn) -> Runner:
    def run(spec, out: Path, log, info):
        result = fn(spec, out, log)
        return {"metrics": {}, "final_logs": {k: float(v) for k, v in result.final_logs.items()},
                "checkpoint": result.checkpoint, "steps": result.steps, "wall_s": result.wall_s,
                "random_weights": result.random_weights, "resumed_from": result.resumed_from}
    return run


@functools.cache
def _cached_inception(device: str, allow_random: bool):
    from bench.eval.inception import InceptionFeatures

    return InceptionFeatures(device, allow_random=allow_random)


def _inception(spec, info):
    """One Inception network per process (a local job runs all evaluation stages of a cell in one process)."""
    return _cached_inception(str(info.device), spec.allow_random_weights)


def _eval_dataset(data: DataConfig, split: str, num_images: int):
    from bench.data import build_dataset

    return build_dataset(data.name, split=split, image_size=data.image_size, train=False, root=data.root,
                         num_images=num_images if data.name == "synthetic" else data.num_images,
                         num_classes=data.num_classes, seed=data.seed)


REAL_STATS = "real_stats.npz"
REFERENCE_BATCH = "reference_batch.npz"


def run_reference(spec: ReferenceSpec, out: Path, log, info) -> dict:
    from bench.eval.generation import make_reference_batch, reference_pool_features
    from bench.eval.reconstruction import real_feature_stats, save_feature_stats

    inception = _inception(spec, info)
    val = _eval_dataset(spec.data, "val", max(spec.rfid_images, spec.gfid_reference_images))
    stats = real_feature_stats(val, spec.rfid_images, inception=inception, batch_size=spec.batch_size, info=info,
                               num_workers=spec.data.num_workers)
    if info.is_main:
        save_feature_stats(stats, out / REAL_STATS, {"inception_random": inception.random,
                                                      "data": dataclasses.asdict(spec.data)})
    if spec.reference_batch:
        if not Path(spec.reference_batch).is_file():
            raise FileNotFoundError(f"reference batch {spec.reference_batch} does not exist")
        if info.is_main and not (out / REFERENCE_BATCH).exists():
            os.symlink(Path(spec.reference_batch).resolve(), out / REFERENCE_BATCH)
        D.barrier()
        reference_pool_features(out / REFERENCE_BATCH, inception, info, spec.batch_size)  # cached for every cell
    else:  # our own batch from the val split (its features are cached as it is written)
        make_reference_batch(val, spec.gfid_reference_images, inception, out / REFERENCE_BATCH,
                             batch_size=spec.batch_size, info=info, num_workers=spec.data.num_workers,
                             metadata={"data": dataclasses.asdict(spec.data)})
    return {"metrics": {}, "random_weights": {"inception": inception.random}}


def run_eval_recon(spec: EvalReconSpec, out: Path, log, info) -> dict:
    from bench.core.loading import load_eval_teacher, load_model
    from bench.eval.reconstruction import evaluate_reconstruction, load_feature_stats
    from bench.perceptual import LPIPS

    tok = load_model(spec.tokenizer, "tokenizer", spec.allow_random_weights)
    teacher = load_eval_teacher(tok.model, spec.teacher, spec.allow_random_weights) if spec.teacher else None
    inception = _inception(spec, info)
    lpips = LPIPS(allow_random=spec.allow_random_weights) if spec.lpips else None
    real_stats, _ = load_feature_stats(Path(spec.reference_dir) / REAL_STATS)
    metrics = evaluate_reconstruction(
        tok.model, _eval_dataset(spec.data, "val", spec.num_images), num_images=spec.num_images, inception=inception,
        batch_size=spec.batch_size, info=info, teacher=teacher.model if teacher else None,
        real_stats=real_stats, lpips=lpips, fid_method=spec.fid_method, num_workers=spec.data.num_workers)
    random = {"tokenizer": tok.random, "inception": inception.random}
    if teacher:
        random["teacher"] = teacher.random
    if lpips is not None:
        random["lpips"] = lpips.random
    return {"metrics": metrics, "random_weights": random}


def run_eval_gen(spec: EvalGenSpec, out: Path, log, info) -> dict:
    from bench.core.loading import load_eval_teacher, load_generator, load_model
    from bench.eval.generation import evaluate_generation
    from bench.eval.sample import sample_to_npz

    tok = load_model(spec.tokenizer, "tokenizer", spec.allow_random_weights)
    gen = load_generator(spec.generator, tok.model, spec.allow_random_weights)
    teacher = load_eval_teacher(tok.model, spec.teacher, spec.allow_random_weights) if spec.teacher else None
    inception = _inception(spec, info)
    npz = sample_to_npz(gen.model, tok.model, out, model=spec.model_name, checkpoint=gen.label,
                        num_samples=spec.num_samples, seed=spec.seed, info=info,
                        teacher=teacher.model if teacher else None, num_classes=spec.num_classes,
                        batch_size=spec.batch_size, **spec.sampler)
    metrics = evaluate_generation(npz, Path(spec.reference_dir) / REFERENCE_BATCH, inception=inception, info=info,
                                  batch_size=spec.batch_size, fid_method=spec.fid_method, clean_fid=spec.clean_fid)
    samples = metrics.pop("samples", {})
    if info.is_main:
        save_sample_grid(npz, out / "samples.png")
    random = {"tokenizer": tok.random, "generator": gen.random, "inception": inception.random}
    if teacher:
        random["teacher"] = teacher.random
    return {"metrics": metrics, "samples": samples, "npz": str(npz), "random_weights": random,
            "artifacts": [str(out / "samples.png")]}


def save_sample_grid(npz: str | os.PathLike, path: Path, count: int = 32, columns: int = 8) -> None:
    import numpy as np
    from PIL import Image

    with np.load(npz) as f:
        images = f["arr_0"][:count]
    rows = -(-len(images) // columns)
    h, w = images.shape[1:3]
    canvas = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i, im in enumerate(images):
        canvas[(i // columns) * h:(i // columns + 1) * h, (i % columns) * w:(i % columns + 1) * w] = im
    Image.fromarray(canvas).save(path)


def run_probe(spec: ProbeSpec, out: Path, log, info) -> dict:
    from bench.core.loading import load_model
    from bench.eval.probe import linear_probe

    tok = load_model(spec.tokenizer, "tokenizer", False)
    metrics = linear_probe(tok.model, _eval_dataset(spec.data, "train", spec.num_train),
                           _eval_dataset(spec.data, "val", spec.num_val), num_train=spec.num_train,
                           num_val=spec.num_val, info=info, epochs=spec.epochs, batch_size=spec.batch_size,
                           num_workers=spec.data.num_workers)
    return {"metrics": metrics, "random_weights": {"tokenizer": tok.random}}


def run_speed(spec: SpeedSpec, out: Path, log, info) -> dict:
    from bench.core.loading import load_eval_teacher, load_generator, load_model
    from bench.speed import measure_generation

    tok = load_model(spec.tokenizer, "tokenizer", spec.allow_random_weights)
    gen = load_generator(spec.generator, tok.model, spec.allow_random_weights)
    teacher = load_eval_teacher(tok.model, spec.teacher, spec.allow_random_weights) if spec.teacher else None
    result = measure_generation(tok.model, gen.model, batch_size=spec.batch_size, sampler_settings=spec.sampler or None,
                                mode=spec.mode, teacher=teacher.model if teacher else None, warmup=spec.warmup,
                                repeats=spec.repeats, device=info.device)
    return {"metrics": {"samples_per_s": float(result["samples_per_s"])}, "speed": result, "random_weights": {}}


def _lazy_train(module: str, name: str) -> Runner:
    def run(spec, out, log, info):
        import importlib

        return _train(getattr(importlib.import_module(module), name))(spec, out, log, info)
    return run


RUNNERS: dict[str, Runner] = {
    "teacher": _lazy_train("bench.train.tokenizer", "train_teacher"),
    "stage1": _lazy_train("bench.train.tokenizer", "train_stage1"),
    "stage2": _lazy_train("bench.train.tokenizer", "train_stage2"),
    "single": _lazy_train("bench.train.tokenizer", "train_single_stage"),
    "generator": _lazy_train("bench.train.generator", "train_generator"),
    "reference": run_reference,
    "eval_recon": run_eval_recon,
    "eval_gen": run_eval_gen,
    "probe": run_probe,
    "speed": run_speed,
}
SPEC_TYPES = {"teacher": TeacherTrainConfig, "stage1": Stage1Config, "stage2": Stage2Config,
              "single": SingleStageConfig, "generator": GeneratorTrainConfig, "reference": ReferenceSpec,
              "eval_recon": EvalReconSpec, "eval_gen": EvalGenSpec, "probe": ProbeSpec, "speed": SpeedSpec}


def run_task(task: StageTask, tracking: Tracking | None = None) -> dict:
    """Run one stage (all ranks), record its result (rank 0) and log it. Returns the result dict."""
    if task.done:
        return task.result()
    if task.threads:
        torch.set_num_threads(task.threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(task.threads)  # numpy/scipy BLAS too (the FID matrix functions)
    out = Path(task.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = D.setup(getattr(task.spec, "device", "auto"))
    logger = tracking.logger() if tracking and info.is_main else None
    if logger:
        logger.set_tags({T.TAG_STATUS: "running"})
        logger.set_status("RUNNING")

    def log(metrics: dict, step: int) -> None:
        if logger:
            logger.log_metrics({k: float(v) for k, v in metrics.items()}, step)

    if info.is_main:
        atomic_write_json(out / "spec.json",
                          {"stage": task.stage, "cell": task.cell, "spec": dataclasses.asdict(task.spec)})
    t0 = time.time()
    result = RUNNERS[task.stage](task.spec, out, log, info)
    result.update(stage=task.stage, cell=task.cell, wall_s=result.get("wall_s", time.time() - t0),
                  device=_device_name(info), devices=_device_count(info, task.threads))
    if info.is_main:
        atomic_write_json(out / RESULT, result)
        if logger:
            logger.log_metrics({k: float(v) for k, v in result["metrics"].items() if _is_number(v)})
            random = any(result.get("random_weights", {}).values())
            tags = {T.TAG_DEVICE: result["device"]}
            if random:
                tags[T.TAG_WEIGHTS_RANDOM] = "true"
            logger.set_tags(tags)
            for artifact in result.get("artifacts", []):
                logger.log_artifact(artifact, task.stage)
            logger.log_artifact(str(out / "spec.json"), f"specs/{task.stage}")
    D.barrier()
    return result


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _device_name(info: D.DistInfo) -> str:
    if info.device.type == "cuda":
        return f"{torch.cuda.get_device_name(info.device)} x{info.world_size}"
    return f"cpu x{info.world_size}"


def _device_count(info: D.DistInfo, threads: int | None) -> int:
    """Accelerators behind this stage; on the CPU, cores (threads) across ranks."""
    if info.device.type == "cuda":
        return info.world_size
    return info.world_size * (threads or torch.get_num_threads())


def cell_cost(tasks: list[StageTask]) -> dict[str, float]:
    """cost_gpu_hours (CPU: core-hours) and cost_wall_hours of a cell's training stages."""
    gpu_s = wall_s = 0.0
    for task in tasks:
        r = task.result()
        if r and task.stage in TRAINING_STAGES:
            wall_s += r["wall_s"]
            gpu_s += r["wall_s"] * r.get("devices", 1)
    return {"cost_gpu_hours": gpu_s / 3600, "cost_wall_hours": wall_s / 3600}


def any_random(tasks: list[StageTask]) -> bool:
    return any(any((t.result() or {}).get("random_weights", {}).values()) for t in tasks)
