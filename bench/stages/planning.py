"""What a stage module's `plan(c)` reads to build its spec: `PlanContext`, the composed sweep config with its data,
the shared stages and, for a cell's stage, the cell and its stages planned so far. bench/plan.py calls each module's
`plan` in pipeline order (bench.stages.STAGES), so a stage sees every stage it can read.

A stage module's planning part:
    plan(c) -> (spec, reads) | None   its spec for this cell (None: the cell has no such stage); reads: role -> the
                                      task whose product the spec names (None: an input from outside the plan)
    SHARED                            (optional) True: planned once per grid, in `_shared`, not per cell
    PRESET                            (optional) the preset sections it turns into settings dataclasses, checked
                                      key by key before anything is planned
    check(cfg)                        (optional) what must hold when grid.stages lists it
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

import models
from bench.train.recipes import DataConfig, loop_from, optim_from

if TYPE_CHECKING:  # the tasks are built by bench.plan; a stage module only reads them
    from bench.stages.task import StageTask

SHARED = "_shared"  # the cell name of the stages a grid's cells share


class PlanError(ValueError):
    """A configuration that cannot make a plan; the message says which value and what to do."""


def unknown_key(parent: str, key: str, known: list[str]) -> str:
    """The message for a config key `parent.key` that is not one of `known`, with the closest known name."""
    prefix = f"{parent}." if parent else ""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {prefix}{close[0]}? " if close else ""
    where = f"known under {parent or 'the top level'}: {', '.join(known)}" if known else "check the spelling"
    return f"{prefix}{key}: the config has no such key; {hint}{where}"


def container(node) -> dict:
    return dict(OmegaConf.to_container(node, resolve=True))


@dataclass
class PlanContext:
    cfg: DictConfig  # the composed sweep config
    train_data: DataConfig
    generator_data: DataConfig  # what the generator and its pretokenized tokens read
    val_data: DataConfig
    shared: dict[str, StageTask] = field(default_factory=dict)  # stage -> the shared task
    name: str = SHARED  # the cell: a grid cell TiTok-{size}-{K}, a single-stage name or a released model
    size: str | None = None  # encoder size letter (S/B/L) of a grid cell
    num_tokens: int | None = None
    tasks: dict[str, StageTask] = field(default_factory=dict)  # stage -> this cell's tasks planned so far

    @property
    def p(self) -> DictConfig:
        return self.cfg.preset

    @property
    def stages(self):
        return self.cfg.grid.stages

    @property
    def device(self) -> str:
        return self.p.device

    @property
    def allow_random(self) -> bool:
        return bool(self.p.allow_random_weights)

    @property
    def encoder(self) -> StageTask | None:
        """The trained stage whose encoder gives the cell's tokens (stage 1: frozen in stage 2; or the single
        stage); None: a released model."""
        return self.tasks.get("stage1") or self.tasks.get("single")

    @property
    def tokenizer_task(self) -> StageTask | None:
        """The stage whose tokenizer the evaluations read: stage 2 adds the pixel decoder."""
        return self.tasks.get("stage2") or self.encoder

    @property
    def tokenizer(self) -> str:
        return self.tokenizer_task.product if self.encoder else self.name

    @property
    def teacher_source(self) -> str:
        """The MaskGIT-VQGAN teacher of stage 1: the shared teacher stage's model, or the preset's name or file."""
        return self.shared["teacher"].product if "teacher" in self.shared else self.p.teacher.source

    @property
    def _decodes_through_teacher(self) -> bool:
        return "stage1" in self.tasks and "stage2" not in self.tasks

    @property
    def teacher_task(self) -> StageTask | None:
        return self.shared.get("teacher") if self._decodes_through_teacher else None

    @property
    def teacher(self) -> str | None:
        """The teacher decoding the cell's tokenizer (a stage-1 one decodes its proxy codes through it)."""
        return self.teacher_source if self._decodes_through_teacher else None

    @property
    def generator_task(self) -> StageTask | None:
        return self.tasks.get("generator")

    @property
    def generator(self) -> str | None:
        if self.encoder is None:
            return models.VARIANTS[self.name].generator
        return self.generator_task.product if self.generator_task else None

    @property
    def makes_ids(self) -> bool:
        """Whether the cell trains a tokenizer with discrete tokens: a VAE's are continuous, so no MaskGIT
        generator (nor its tokens) for it."""
        if self.encoder is None:
            return False
        return self.size is not None or models.resolve(self.name).config.quantizer == "vq"


def training_keywords(c: PlanContext, section: DictConfig, data: DataConfig | None = None) -> dict:
    """The keywords every training spec takes alike: its data (the train images unless `data`), the optimiser and
    loop of its preset `section`, and the device."""
    return {
        "data": c.train_data if data is None else data,
        "optim": optim_from(container(section.optim)),
        "loop": loop_from(container(section.loop), c.cfg.seed),
        "device": c.device,
    }


def eval_keywords(c: PlanContext, batch_size: int | None = None) -> dict:
    """The keywords every evaluation spec takes alike: the stand-in permission, the batch size (preset.eval's
    unless `batch_size`) and the device."""
    return {
        "allow_random_weights": c.allow_random,
        "batch_size": c.p.eval.batch_size if batch_size is None else batch_size,
        "device": c.device,
    }
