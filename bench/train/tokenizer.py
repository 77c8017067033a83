"""Tokenizer training stages: stage 1 (proxy codes), stage 2 (decoder fine-tuning), single-stage (VQ/VAE),
and the small MaskGIT-VQGAN teacher for offline smoke runs.

Each `train_*` function trains (or resumes) one stage in `out_dir` and returns a `StageResult` (bench/train/stage.py).
It builds the stage's models from its settings (released or stand-in weights, checkpoints), their `Objective` with
`*_objective` (the losses: what the speed benchmark times too), and runs the loop.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn.functional as F
from torch import nn

import models
from bench.core import dist as D
from bench.core.loading import load_teacher, vqgan_overrides

from .loop import train
from .recipes import SingleStageConfig, Stage1Config, Stage2Config, TeacherTrainConfig
from .reconstruction import ReconstructionLoss, reconstruction_objective
from .stage import Log, StageResult, batches_for, finish, start_stage
from .trainer import Objective


def _check_grid(tokenizer: models.TiTok, teacher: models.MaskGITVQGAN, image_size: int) -> None:
    grid = image_size // teacher.config.downsample_factor
    if tokenizer.config.token_grid != grid or tokenizer.config.image_size != image_size:
        raise ValueError(
            f"the tokenizer predicts a {tokenizer.config.token_grid}x{tokenizer.config.token_grid} proxy-code grid "
            f"at {tokenizer.config.image_size} px, but the teacher gives {grid}x{grid} codes at {image_size} px: "
            "match image_size, decoder_patch_size and the teacher's channel_mult"
        )


# ---- stage 1 --------------------------------------------------------------------------------------------------------
def stage1_objective(cfg: Stage1Config, tokenizer: models.TiTok, teacher: models.MaskGITVQGAN) -> Objective:
    """CE against the (frozen) teacher's codes + the quantiser loss; the tokenizer predicts the teacher's codebook.

    Two schedule aids for toy models, off in the reference recipe (why: docs/measurements.md):
    decoder_warmup_steps W lets the decoder learn the codes' marginal alone (the encoder, latent tokens and codebook at
    lr 0 for W steps, ramped linearly to full over the next W); continuous_steps M feeds the decoder the
    unquantised latents before step M (the VQ's straight-through copies of one code cannot tell images apart),
    then sets the codebook to a k-means of that step's latents (rank 0's batch, broadcast) and quantises from then
    on. Logged: stage1/distinct_sequences, the share of a batch's images whose token sequences differ."""
    warmup, continuous = cfg.decoder_warmup_steps, cfg.continuous_steps
    if continuous and tokenizer.config.quantizer != "vq":
        raise ValueError(f"stage1 continuous_steps={continuous} needs a VQ tokenizer, not {tokenizer.config.quantizer}")
    codebook_set_at: list[int] = []  # the k-means runs once, on the step's first micro-batch

    def loss(name, wrapped, batch, step, cache):
        images, _ = batch
        with torch.no_grad():
            codes = teacher.encode(images)
            if continuous and step == continuous and step not in codebook_set_at:
                tokenizer.quantize.init_codebook(
                    tokenizer.forward_encoder(images), generator=torch.Generator().manual_seed(cfg.loop.seed + step)
                )
                D.broadcast_(tokenizer.quantize.embedding.weight.data)
                codebook_set_at.append(step)
        if continuous:
            tokenizer.quantize.continuous = step < continuous
        logits, q = wrapped["tokenizer"](images)
        ce = F.cross_entropy(logits.float().flatten(2), codes)
        total = ce + cfg.quantizer_weight * q.loss
        indices = q.indices
        # torch.unique reads the device: deferred to log steps (the loop calls it there)
        distinct = (lambda: len(torch.unique(indices, dim=0)) / len(indices)) if indices is not None else float("nan")
        return total, {
            "stage1/loss": total.detach(),
            "stage1/ce": ce.detach(),
            "stage1/quantizer": q.loss.detach(),
            "stage1/code_acc": (logits.argmax(1).flatten(1) == codes).float().mean(),
            "stage1/distinct_sequences": distinct,
        }

    def encoder_lr_factor(part: str, step: int) -> float:
        return 1.0 if part == "decoder" else min(1.0, max(0.0, (step - warmup) / warmup))

    return Objective(
        modules={"tokenizer": tokenizer},
        optim={"tokenizer": cfg.optim},
        loss=loss,
        ema_of="tokenizer",
        frozen={"teacher": teacher},
        **(
            {
                "part_of": lambda _, param: "decoder" if param.startswith("decoder.") else "encoder",
                "lr_factor": encoder_lr_factor,
            }
            if warmup
            else {}
        ),
    )


def train_stage1(cfg: Stage1Config, out_dir: str | os.PathLike, log: Log = None) -> StageResult:
    info = start_stage(cfg.device, cfg.loop.seed)
    teacher, teacher_random = load_teacher(cfg.teacher.source, cfg.teacher.overrides, cfg.allow_random_weights)
    # the proxy-code head predicts the teacher's codebook
    tokenizer = models.build(
        cfg.model,
        **dict(cfg.model_overrides, pixel_decoder=False, vqgan=teacher.config, image_size=cfg.data.image_size),
    )
    if not tokenizer.config.two_stage:
        raise ValueError(f"{cfg.model} is a single-stage tokenizer; stage 1 trains the two-stage family")
    _check_grid(tokenizer, teacher, cfg.data.image_size)
    result = train(
        stage1_objective(cfg, tokenizer, teacher),
        batches_for(cfg.data, cfg.loop.batch_size, cfg.loop.seed, info),
        cfg.loop,
        out_dir,
        info,
        log,
    )
    return finish(result, out_dir, info, {"teacher": teacher_random}, {"stage": "stage1"})


# ---- stage 2 --------------------------------------------------------------------------------------------------------
def load_stage1(checkpoint: str) -> models.TiTok:
    stage1 = models.load(checkpoint)
    if not (isinstance(stage1, models.TiTok) and stage1.config.two_stage):
        raise ValueError(f"{checkpoint} is not a two-stage (stage-1) TiTok checkpoint")
    return stage1


def stage2_model(stage1: models.TiTok, teacher: models.MaskGITVQGAN) -> models.TiTok:
    """The stage-1 tokenizer with the teacher's decoder and codebook as its pixel decoder; encoder, latent tokens
    and quantiser frozen."""
    config = dataclasses.replace(stage1.config, pixel_decoder=True, vqgan=teacher.config)
    model = models.build_from_config(config)
    state = {
        **stage1.state_dict(),
        **{f"pixel_decoder.{k}": v for k, v in teacher.decoder.state_dict().items()},
        "pixel_quantize.embedding.weight": teacher.quantize.embedding.weight.detach(),
    }
    model.load_state_dict(state, strict=True)
    for part in (model.encoder, model.quantize):
        part.requires_grad_(False)
    model.latent_tokens.requires_grad_(False)
    return model


def stage2_objective(cfg: Stage2Config, tokenizer: models.TiTok) -> Objective:
    """L2 + perceptual + GAN on the decoder and pixel decoder, then the discriminator's update; the frozen encoder
    and quantiser carry no loss (their weights are fixed)."""
    criterion = ReconstructionLoss(cfg.perceptual, cfg.gan, cfg.allow_random_weights)
    return reconstruction_objective("stage2", tokenizer, criterion, cfg.optim, cfg.gan.optim, None)


def train_stage2(cfg: Stage2Config, out_dir: str | os.PathLike, log: Log = None) -> StageResult:
    info = start_stage(cfg.device, cfg.loop.seed)
    if not cfg.init_from:
        raise ValueError("stage 2 needs init_from: the stage-1 checkpoint")
    teacher, teacher_random = load_teacher(cfg.teacher.source, cfg.teacher.overrides, cfg.allow_random_weights)
    tokenizer = stage2_model(load_stage1(cfg.init_from), teacher)
    _check_grid(tokenizer, teacher, cfg.data.image_size)
    del teacher
    objective = stage2_objective(cfg, tokenizer)
    result = train(
        objective, batches_for(cfg.data, cfg.loop.batch_size, cfg.loop.seed, info), cfg.loop, out_dir, info, log
    )
    return finish(result, out_dir, info, {"teacher": teacher_random, **objective.random_weights}, {"stage": "stage2"})


# ---- single stage ---------------------------------------------------------------------------------------------------
def single_stage_objective(cfg: SingleStageConfig, tokenizer: models.TiTok) -> Objective:
    """Stage 2's losses + the quantiser loss (VQ) or KL (VAE), the whole tokenizer trained."""
    criterion = ReconstructionLoss(cfg.perceptual, cfg.gan, cfg.allow_random_weights)

    def quantizer_term(q):
        if tokenizer.is_vq:
            return cfg.quantizer_weight * q.loss, {"quantizer": q.loss.detach()}
        return cfg.kl_weight * q.loss, {"kl": q.loss.detach()}

    return reconstruction_objective("single", tokenizer, criterion, cfg.optim, cfg.gan.optim, quantizer_term)


def train_single_stage(cfg: SingleStageConfig, out_dir: str | os.PathLike, log: Log = None) -> StageResult:
    info = start_stage(cfg.device, cfg.loop.seed)
    tokenizer = models.build(cfg.model, **dict(cfg.model_overrides, image_size=cfg.data.image_size))
    if tokenizer.config.two_stage:
        raise ValueError(f"{cfg.model} is a two-stage tokenizer; train it with stage 1 and stage 2")
    objective = single_stage_objective(cfg, tokenizer)
    result = train(
        objective, batches_for(cfg.data, cfg.loop.batch_size, cfg.loop.seed, info), cfg.loop, out_dir, info, log
    )
    return finish(result, out_dir, info, objective.random_weights, {"stage": "single"})


# ---- the small teacher for offline smoke runs -----------------------------------------------------------------------
class _TeacherAutoencoder(nn.Module):
    """MaskGIT-VQGAN trained as a plain VQ autoencoder (L2 + codebook + commitment, straight-through).

    Codes unused for a while are re-seeded from the current batch's encoder outputs: without it a small
    codebook collapses to a handful of codes, and the proxy-code task of stage 1 becomes trivial. The
    re-seeding uses this process's batch, so the teacher is trained single-process (it is a toy).
    """

    def __init__(self, vqgan: models.MaskGITVQGAN, commitment_cost: float, usage_decay: float = 0.9):
        super().__init__()
        self.vqgan, self.commitment_cost, self.usage_decay = vqgan, commitment_cost, usage_decay
        self.register_buffer("usage", torch.ones(vqgan.config.codebook_size))

    def forward(self, images):
        z = self.vqgan.encoder(images)
        codes = self.vqgan.quantize.codes(z)
        if self.training:
            self._reseed_dead_codes(z, codes)
            codes = self.vqgan.quantize.codes(z)
        zq = self.vqgan.quantize.lookup(codes)
        vq = F.mse_loss(zq, z.detach()) + self.commitment_cost * F.mse_loss(z, zq.detach())
        recon = self.vqgan.decoder(z + (zq - z).detach())
        return recon, vq

    @torch.no_grad()
    def _reseed_dead_codes(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        counts = torch.bincount(codes.flatten(), minlength=self.usage.numel()).float()
        self.usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        dead = (self.usage < 1e-3).nonzero().flatten()
        if len(dead):
            vectors = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            pick = torch.randint(len(vectors), (len(dead),), device=z.device)
            self.vqgan.quantize.embedding.weight[dead] = vectors[pick].to(self.vqgan.quantize.embedding.weight.dtype)
            self.usage[dead] = 1.0


def train_teacher(cfg: TeacherTrainConfig, out_dir: str | os.PathLike, log: Log = None) -> StageResult:
    info = start_stage(cfg.device, cfg.loop.seed)
    vqgan = models.build("MaskGIT-VQGAN", **vqgan_overrides(cfg.overrides))
    net = _TeacherAutoencoder(vqgan, cfg.commitment_cost)

    def loss(name, wrapped, batch, step, cache):
        images, _ = batch
        recon, vq = wrapped["teacher"](images)
        l2 = F.mse_loss(recon.float(), images)
        return l2 + vq, {"teacher/l2": l2.detach(), "teacher/vq": vq.detach()}

    objective = Objective(modules={"teacher": net}, optim={"teacher": cfg.optim}, loss=loss, ema_of="teacher")
    result = train(
        objective, batches_for(cfg.data, cfg.loop.batch_size, cfg.loop.seed, info), cfg.loop, out_dir, info, log
    )
    result.model = result.model.vqgan
    return finish(result, out_dir, info, {}, {"stage": "teacher"})
