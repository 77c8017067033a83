"""What every stage module shares: the context a stage runs in, the identity rule, and the evaluation stages'
common pieces (one Inception network per process, the evaluation images).

A stage module (bench/stages/<stage>.py) holds
    Spec (or <Name>Spec)       its settings; the training stages' are bench/train/recipes.py's dataclasses
    run(spec, ctx) -> dict     the work, writing into ctx.out; the result has "metrics" (numbers for the cell's
                               MLflow run) and may have "random_weights", "tags", "artifacts"
    RULE                       its identity rule: RULE.identity(spec, inputs), a hash of what determines its result
    NAME, RESOURCES            its name; "train" | "eval" (which of the cluster's time limits its jobs get)
    SINGLE_PROCESS             (optional) True: it runs as one process, and its jobs ask for one task and one GPU
    PRODUCT                    the file in its folder that the stages reading it open (None: nothing reads it)
    plan(c) -> (spec, reads)   its spec for a cell or the grid's shared stages, from the preset
                               (bench/stages/planning.py: PlanContext, SHARED, PRESET, check)

The identity rule (each module's docstring says which of its settings count):
- counted: every setting that changes the result beyond float noise, and each input, an input being a file or
  model another stage makes (counted by that stage's identity: changing a training setting re-runs that stage and
  everything that reads it) or one from outside the plan (a registered model or weights name as it is, a file by a
  hash of its content, unless it is a registered weights file: then its name);
- never counted: where things are (output folders, data roots, the paths of inputs), how they run (device,
  data-loader workers, threads, launcher, cluster), how often training logs or checkpoints, and the batch size of
  an evaluation (features and samples are per image: it changes numbers by float noise only); a speed
  measurement is the exception, its device and batch size are what it measures.
So an evaluation setting re-runs that evaluation only, and a re-plan of an unchanged config has nothing to run.
Adding a field to a spec changes every identity of that stage (the hash covers all fields): a new setting is a
new result unless it is listed as ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.dist import DistInfo
from bench.train.recipes import DataConfig
from models.source_records import file_sha256

# fields of every spec that never change a result
WHERE_AND_HOW = ("device", "data.root", "data.train_shards", "data.val_shards", "data.num_workers")
TRAINING_IGNORED = WHERE_AND_HOW + (
    "loop.checkpoint_every",
    "loop.checkpoint_every_s",
    "loop.log_every",
    "loop.max_consecutive_skips",
)  # the last: when a failing fp16 run stops
# an evaluation reads `num_images` images of its own: the dataset's size setting picks nothing
EVAL_IGNORED = WHERE_AND_HOW + ("data.num_images", "batch_size")


def short_hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _no_log(metrics: dict, step: int) -> None:
    """Outside a sweep nothing records training curves."""


@dataclass(frozen=True)
class Context:
    """Where and how a stage runs: its folder, this process's rank and device, and the callback for training
    curves (metrics, step)."""

    out: Path
    info: DistInfo = field(default_factory=DistInfo)
    log: Callable[[dict, int], None] = _no_log


# ---- identity -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IdentityRule:
    """How a stage's identity is made from its spec: every field but `ignored` (dotted paths into the spec) and
    the fields naming inputs, plus an identity per input role (`inputs`: role -> the spec field naming it)."""

    stage: str
    ignored: tuple[str, ...]
    inputs: dict[str, str] = field(default_factory=dict)

    def settings(self, spec) -> dict:
        """The spec's result-determining settings (without the inputs)."""
        tree = dataclasses.asdict(spec)
        for dotted in (*self.ignored, *self.inputs.values()):
            _drop(tree, dotted)
        return tree

    def identity(self, spec, inputs: dict[str, str] | None = None) -> str:
        """`inputs`: role -> identity of the stage whose product the spec names; a role not given is an input
        from outside the plan, identified by `source_identity` of the field's value."""
        inputs = inputs or {}
        unknown = set(inputs) - set(self.inputs)
        if unknown:
            raise ValueError(f"stage {self.stage} reads no input {sorted(unknown)}; its inputs: {sorted(self.inputs)}")
        tree = dataclasses.asdict(spec)
        ids = {
            role: inputs[role] if role in inputs else source_identity(_get(tree, path))
            for role, path in self.inputs.items()
        }
        return short_hash({"stage": self.stage, "settings": self.settings(spec), "inputs": ids})


def _drop(tree: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.get(key)
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)


def _get(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def source_identity(source: str | None) -> str | None:
    """An input from outside the plan: a registered weights file by its name, another file or a folder by a hash
    of its content, anything else (a model or weights name) as it is."""
    if source is None:
        return None
    path = Path(source).expanduser()
    if not path.exists():
        return str(source)
    from bench import weights

    name = weights.name_of(path)
    if name is not None:
        return name
    # hidden files (a stage's owner lock, a writer's temporary file) are not content
    files = (
        sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
    )
    return short_hash([(str(p.relative_to(path)) if path.is_dir() else p.name, file_sha256(p)) for p in files])


# ---- what the evaluation stages share ----------------------------------------------------------------------------
@functools.cache
def _inception(device: str, allow_random: bool, dtype: str, weights_file: str | None):
    from bench.eval.inception import InceptionFeatures

    return InceptionFeatures(device, allow_random=allow_random, dtype=dtype)


def inception(spec, ctx: Context):
    """The Inception network of `spec` (its dtype and stand-in permission) on this rank's device, made once per
    process: a local job runs all of a cell's evaluations in one process, the CLI all of its metrics."""
    from bench import weights

    # resolved here, not only when the network is made: the stage's tags name the file each stage used
    resolved = weights.resolve(weights.INCEPTION, spec.allow_random_weights)
    return _inception(
        str(ctx.info.device),
        spec.allow_random_weights,
        spec.inception_dtype,
        str(resolved.path) if resolved.path else None,
    )


def feature_tags(metric: str, spec, extractor, reference: str) -> dict[str, str]:
    """What an evaluation's numbers were made with, as tags `titok.<metric>_*` (metric: rfid | gfid): the feature
    network and its weights file's sha256, its dtype, the Frechet distance's implementation, the reference."""
    from bench.eval.inception import TF_EXTRACTOR_NAME
    from bench.tracking import eval_tag

    path = Path(extractor.weights_path)
    weights = "a random stand-in" if extractor.random else "released weights"
    tags = {
        "features": f"torch-fidelity InceptionV3 ({TF_EXTRACTOR_NAME}, {weights})",
        "features_sha256": file_sha256(path),
        "inception_dtype": spec.inception_dtype,
        "distance": f"titok-bench bench.eval.metrics.frechet_distance ({spec.fid_method})",
        "reference": reference,
    }
    return {eval_tag(metric, kind): value for kind, value in tags.items()}


def eval_dataset(data: DataConfig, split: str, num_images: int):
    """The `num_images` evaluation images of `split` (centre crops; ImageNet: a class-balanced subset of that many,
    chosen with data.seed), the same for every stage and entry point that reads them."""
    from bench.train.stage import dataset_of

    return dataset_of(dataclasses.replace(data, num_images=num_images), split)


def training_result(result) -> dict:
    """A training stage's result (bench.train's StageResult) as a stage result."""
    return {
        "metrics": {},
        "final_logs": {k: float(v) for k, v in result.final_logs.items()},
        "checkpoint": result.checkpoint,
        "steps": result.steps,
        "wall_s": result.wall_s,
        "random_weights": result.random_weights,
        "resumed_from": result.resumed_from,
        "precision": result.precision,
        "lost_s": result.lost_s,
    }
