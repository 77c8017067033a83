"""What the GPU check runs: the checks' names, the sizes (Config) and the models they run on (built once per run)."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

import models

from ..factories import build_generator, build_tokenizer, teacher_for

TOKENIZER, GENERATOR, SINGLE_STAGE = "TiTok-L-32", "MaskGIT-ViT:TiTok-L-32", "TiTok-BL-64-VQ"
CHECKS = ("peak", "paths", "graphs", "training", "nccl", "ddp", "generation", "train_speed")


@dataclass
class Config:
    """What the checks run: full size on CUDA by default; `toy` shrinks the models and batches (factories' toy
    sizes) so that every check runs on a CPU in about a minute."""

    device: torch.device
    toy: bool = False
    path_batch: int = 8
    gen_batch: int = 256
    gen_modes: tuple[str, ...] = ("fast", "compiled")
    train_batch: int | None = None  # the training steps (None: each stage's paper per-GPU batch, paper_loop)
    speed_batch: int | None = None  # stage-1 throughput (None: stage 1's paper per-GPU batch)
    warmup: int = 1
    repeats: int = 3
    num_steps: int | None = None  # sampler steps (None: the generator's paper settings)
    peak_budget_s: float = 3.0
    seed: int = 0

    @classmethod
    def for_run(cls, device: str, toy: bool, **overrides) -> Config:
        # toy: the generation benchmark without `compiled` (inductor's C++ build takes minutes on a small CPU; the
        # graphs check still compiles)
        base = (
            dict(
                path_batch=2,
                gen_batch=4,
                gen_modes=("fast",),
                train_batch=2,
                speed_batch=2,
                repeats=1,
                num_steps=2,
                peak_budget_s=0.5,
            )
            if toy
            else {}
        )
        return cls(torch.device(device), toy, **{**base, **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def model(self) -> str:
        return " (toy)" if self.toy else ""

    @property
    def full_cuda(self) -> bool:
        return self.device.type == "cuda" and not self.toy


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def model_pair(cfg: Config, state: dict) -> tuple[models.TiTok, models.MaskGITGenerator, models.MaskGITVQGAN | None]:
    """TiTok-L-32, its generator and (for a stage-1-form tokenizer) a teacher, random, on the device: built once per
    run (kept in `state`), as building full-size models on the CPU costs seconds."""
    if "pair" not in state:
        torch.manual_seed(cfg.seed)
        tok = build_tokenizer(TOKENIZER, toy=cfg.toy)
        gen = build_generator(GENERATOR, tok, toy=cfg.toy)
        teacher = teacher_for(tok)
        teacher = teacher.to(cfg.device) if teacher is not None else None
        state["pair"] = (tok.to(cfg.device), gen.to(cfg.device), teacher)
    return state["pair"]


def sampler_settings(cfg: Config, gen: models.MaskGITGenerator):
    """The generator's paper sampler settings, with cfg.num_steps steps where it is set."""
    return gen.config.sampler.updated(num_steps=cfg.num_steps) if cfg.num_steps else gen.config.sampler
