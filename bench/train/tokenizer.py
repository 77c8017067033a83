"""Tokenizer training stages: stage 1 (proxy codes), stage 2 (decoder fine-tuning), single-stage (VQ/VAE),
and the small MaskGIT-VQGAN teacher for offline smoke runs.

Each `train_*` function trains (or resumes) one stage in `out_dir`, writes the final EMA weights to
`out_dir/model.safetensors` (a self-describing checkpoint) and returns a `StageResult`. It builds the stage's
models from its settings (released or stand-in weights, checkpoints), their `Objective` with `*_objective` (the
losses: what the speed benchmark times too), and runs the loop.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import models
from bench.core import dist as D
from bench.core.loading import load_teacher, vqgan_overrides
from bench.data import ShardStream, build_dataset, infinite_batches, make_loader, make_stream_loader, shard_list

from .loop import Objective, TrainResult, train
from .losses import LeCam, NLayerDiscriminator, frozen_call, hinge_d_loss, hinge_g_loss
from .recipes import (
    DataConfig,
    GANConfig,
    PerceptualConfig,
    SingleStageConfig,
    Stage1Config,
    Stage2Config,
    TeacherTrainConfig,
)

MODEL_FILE = "model.safetensors"

Log = Callable[[dict, int], None] | None


@dataclass
class StageResult:
    checkpoint: str
    steps: int
    wall_s: float
    final_logs: dict[str, float]
    random_weights: dict[str, bool] = field(default_factory=dict)  # pretrained network -> was a stand-in
    resumed_from: int = 0
    precision: str = "fp32"  # the precision that ran (TrainResult.precision)
    lost_s: float = 0.0  # of wall_s: work done again after a preemption or kill (TrainResult.lost_s)

    @property
    def any_random(self) -> bool:
        return any(self.random_weights.values())


# ---- shared pieces ------------------------------------------------------------------------------------------------
def start_stage(device: str, seed: int) -> D.DistInfo:
    """Distributed set-up and a seeded RNG, so that model initialisation is reproducible (and equal on all
    ranks); the loop reseeds per rank for the training randomness."""
    info = D.setup(device)
    torch.manual_seed(seed)
    return info


def local_batch(batch_size: int, info: D.DistInfo) -> int:
    """This rank's share of a global batch."""
    if batch_size % info.world_size:
        raise ValueError(f"global batch {batch_size} does not divide across {info.world_size} ranks")
    return batch_size // info.world_size


def loader_batches(dataset, batch_size: int, seed: int, info: D.DistInfo, num_workers: int = 0):
    """A map-style dataset's batch source: a function of the start step, yielding (step, this rank's share of the
    global batch on the device), in the loader's resumable order (bench.data.loader)."""
    local = local_batch(batch_size, info)

    def batches(start_step: int):
        loader = make_loader(
            dataset,
            batch_size=local,
            seed=seed,
            rank=info.rank,
            world_size=info.world_size,
            num_workers=num_workers,
            start_step=start_step,
            pin_memory=info.device.type == "cuda",
        )
        for step, items in infinite_batches(loader):
            yield step, tuple(x.to(info.device, non_blocking=True) for x in items)

    return batches


def batches_for(
    data: DataConfig, batch_size: int, seed: int, info: D.DistInfo, train_split: bool = True, train_augment: bool = True
):
    """The loop's batch source: a function of the start step, yielding this rank's (images, labels).
    `train_augment` False gives centre crops (the generator's input) instead of random crops + flips."""
    if data.name == "imagenet_wds":  # streamed shards: their own exact-resume order (bench/data/shards.py)
        shards = shard_list(
            data.train_shards if train_split else data.val_shards,
            "data.train_shards" if train_split else "data.val_shards",
        )
        local = local_batch(batch_size, info)

        def shard_batches(start_step: int):
            stream = ShardStream(
                shards,
                image_size=data.image_size,
                train=train_split and train_augment,
                batch_size=local,
                seed=seed,
                start_step=start_step,
                rank=info.rank,
                world_size=info.world_size,
                num_workers=data.num_workers,
                num_classes=data.num_classes,
            )
            for images, labels in make_stream_loader(stream, pin_memory=info.device.type == "cuda"):
                yield images.to(info.device, non_blocking=True), labels.to(info.device, non_blocking=True)

        return shard_batches
    dataset = build_dataset(
        data.name,
        split="train" if train_split else "val",
        image_size=data.image_size,
        train=train_split and train_augment,
        root=data.root,
        num_images=data.num_images,
        num_classes=data.num_classes,
        seed=data.seed,
    )
    stepped = loader_batches(dataset, batch_size, seed, info, data.num_workers)
    return lambda start_step: (batch for _, batch in stepped(start_step))


def finish(
    result: TrainResult,
    out_dir: str | os.PathLike,
    info: D.DistInfo,
    random_weights: dict[str, bool],
    metadata: dict | None = None,
) -> StageResult:
    path = Path(out_dir) / MODEL_FILE
    if info.is_main:
        meta = {
            "steps": str(result.steps),
            **{f"random.{k}": str(v).lower() for k, v in random_weights.items()},
            **(metadata or {}),
        }
        models.save(result.model, path, metadata=meta)
    D.barrier()
    return StageResult(
        str(path),
        result.steps,
        result.wall_s,
        result.final_logs,
        random_weights,
        result.resumed_from,
        result.precision,
        result.lost_s,
    )


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

    Two schedule aids for toy models, off in the reference recipe: a small TiTok first learns the codes' marginal by
    pulling every image's latents to one point, a plateau it is slow to leave (docs/measurements.md).
    decoder_warmup_steps W lets the decoder learn the marginal alone (the encoder, latent tokens and codebook at
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


# ---- reconstruction losses shared by stage 2 and single-stage ----------------------------------------------------
class ReconstructionLoss(nn.Module):
    """L2 + perceptual (LPIPS and/or ConvNeXt logits) + hinge GAN with LeCam, the discriminator trained from
    `gan.start_step`. `generator_loss` and `discriminator_loss` are the two optimizers' objectives."""

    def __init__(self, perceptual: PerceptualConfig, gan: GANConfig, allow_random: bool):
        super().__init__()
        from bench.perceptual import LPIPS, ConvNeXtLogits

        self.perceptual_cfg, self.gan_cfg = perceptual, gan
        self.random: dict[str, bool] = {}
        if perceptual.convnext_weight > 0:
            self.convnext = ConvNeXtLogits(allow_random=allow_random, resolution=perceptual.resolution)
            self.random["convnext"] = self.convnext.random
        if perceptual.lpips_weight > 0:
            self.lpips = LPIPS(allow_random=allow_random)
            self.random["lpips"] = self.lpips.random
        self.discriminator = NLayerDiscriminator(gan.disc_base_channels, groups=gan.disc_groups)
        self.lecam = LeCam()

    def gan_active(self, step: int) -> bool:
        return self.gan_cfg.weight > 0 and step >= self.gan_cfg.start_step

    def generator_loss(self, images, recon, step) -> tuple[torch.Tensor, dict]:
        recon = recon.float()
        l2 = F.mse_loss(recon, images)
        total, logs = l2, {"l2": l2.detach()}
        p = self.perceptual_cfg
        if p.convnext_weight > 0:
            c = F.mse_loss(self.convnext(recon), self.convnext(images))
            total, logs["convnext"] = total + p.convnext_weight * c, c.detach()
        if p.lpips_weight > 0:
            lp = self.lpips(recon, images).mean()
            total, logs["lpips"] = total + p.lpips_weight * lp, lp.detach()
        if self.gan_active(step):
            g = hinge_g_loss(frozen_call(self.discriminator, recon))
            total, logs["gan_g"] = total + self.gan_cfg.weight * g, g.detach()
        return total, logs

    def discriminator_loss(self, disc: nn.Module, images, recon) -> tuple[torch.Tensor, dict]:
        real, fake = disc(images.float()), disc(recon.detach().float())
        d = hinge_d_loss(real, fake)
        reg = self.lecam(real, fake)
        total = d + self.gan_cfg.lecam_weight * reg
        return total, {
            "gan_d": d.detach(),
            "lecam": reg.detach(),
            "logits_real": real.mean().detach(),
            "logits_fake": fake.mean().detach(),
        }


def _reconstruction_objective(
    stage: str,
    tokenizer: models.TiTok,
    criterion: ReconstructionLoss,
    optim,
    gan_optim,
    quantizer_term: Callable | None,
) -> Objective:
    def loss(name, wrapped, batch, step, cache):
        images, _ = batch
        if name == "tokenizer":
            recon, q = wrapped["tokenizer"](images)
            total, logs = criterion.generator_loss(images, recon, step)
            if quantizer_term is not None:
                extra, extra_logs = quantizer_term(q)
                total = total + extra
                logs.update(extra_logs)
            cache["recon"] = recon.detach()
            logs["loss"] = total.detach()
        else:
            total, logs = criterion.discriminator_loss(wrapped["discriminator"], images, cache["recon"])
        return total, {f"{stage}/{k}": v for k, v in logs.items()}

    return Objective(
        modules={"tokenizer": tokenizer, "discriminator": criterion.discriminator},
        optim={"tokenizer": optim, "discriminator": gan_optim},
        loss=loss,
        active=lambda name, step: name == "tokenizer" or criterion.gan_active(step),
        ema_of="tokenizer",
        extra_state=lambda: {"lecam": criterion.lecam.state_dict()},
        load_extra_state=lambda s: criterion.lecam.load_state_dict(s["lecam"]),
        frozen={
            k: m
            for k, m in (
                ("convnext", getattr(criterion, "convnext", None)),
                ("lpips", getattr(criterion, "lpips", None)),
                ("lecam", criterion.lecam),
            )
            if m is not None
        },
        random_weights=criterion.random,
    )


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
    return _reconstruction_objective("stage2", tokenizer, criterion, cfg.optim, cfg.gan.optim, None)


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

    return _reconstruction_objective("single", tokenizer, criterion, cfg.optim, cfg.gan.optim, quantizer_term)


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
