"""The reconstruction objective of stage 2 and single-stage training: L2 + perceptual (LPIPS and/or ConvNeXt
logits) + hinge GAN with LeCam on the tokenizer's output, then the discriminator's update."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import models
from bench.perceptual import LPIPS, ConvNeXtLogits

from .losses import LeCam, NLayerDiscriminator, frozen_call, hinge_d_loss, hinge_g_loss
from .recipes import GANConfig, PerceptualConfig
from .trainer import Objective


class ReconstructionLoss(nn.Module):
    """L2 + perceptual (LPIPS and/or ConvNeXt logits) + hinge GAN with LeCam, the discriminator trained from
    `gan.start_step`. `generator_loss` and `discriminator_loss` are the two optimizers' objectives."""

    def __init__(self, perceptual: PerceptualConfig, gan: GANConfig, allow_random: bool):
        super().__init__()
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


def reconstruction_objective(
    stage: str,
    tokenizer: models.TiTok,
    criterion: ReconstructionLoss,
    optim,
    gan_optim,
    quantizer_term: Callable | None,
) -> Objective:
    """The tokenizer's update (`criterion.generator_loss`, plus `quantizer_term(q)` -> (loss, logs) where given),
    then the discriminator's once the GAN is active; logs under `stage`/."""

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
        # as the official training script, whose discriminator scheduler steps only once the discriminator trains
        schedule_start={"discriminator": criterion.gan_cfg.start_step},
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
