"""Losses of the training stages: the paper's discriminator (BlurPool NLayer), hinge GAN terms, the LeCam
regulariser, and the masked-token loss of the MaskGIT generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect pad, depthwise binomial [1, 3, 3, 1] filter."""

    def __init__(self, channels: int):
        super().__init__()
        k = torch.tensor([1.0, 3.0, 3.0, 1.0])
        k = torch.outer(k, k)
        self.register_buffer("kernel", (k / k.sum()).expand(channels, 1, 4, 4).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 2, 1, 2), mode="reflect"), self.kernel.to(x.dtype), stride=2, groups=x.shape[1])


class NLayerDiscriminator(nn.Module):
    """Conv5x5 -> 3 x (Conv3x3, BlurPool /2, GroupNorm, LeakyReLU 0.1) -> AdaptiveMaxPool(16) -> Conv1x1 ->
    Conv5x5 to one logit map. `base` = 128 in the paper (channels 128, 128, 256, 512)."""

    def __init__(self, base: int = 128, pool: int = 16, groups: int = 32):
        super().__init__()
        widths = [base, base, 2 * base, 4 * base]
        layers: list[nn.Module] = [nn.Conv2d(3, base, 5, padding=2), nn.LeakyReLU(0.1)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1),
                BlurPool(cout),
                nn.GroupNorm(groups, cout),
                nn.LeakyReLU(0.1),
            ]
        layers += [
            nn.AdaptiveMaxPool2d(pool),
            nn.Conv2d(widths[-1], widths[-1], 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(widths[-1], 1, 5, padding=2),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2.0 - 1.0)  # [0, 1] images, centred for the first conv


def frozen_call(module: nn.Module, *args):
    """Run a module with detached parameters: gradients reach the inputs only (the generator's view of the
    discriminator, without touching the discriminator's DDP hooks or gradients)."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    return functional_call(module, params, args)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


class LeCam(nn.Module):
    """LeCam regulariser: pull D's outputs towards the running means of the other side's outputs."""

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("real_mean", torch.zeros(()))
        self.register_buffer("fake_mean", torch.zeros(()))

    def forward(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.real_mean.lerp_(real_logits.float().mean(), 1 - self.decay)
            self.fake_mean.lerp_(fake_logits.float().mean(), 1 - self.decay)
        return F.relu(real_logits - self.fake_mean).pow(2).mean() + F.relu(self.real_mean - fake_logits).pow(2).mean()


def masked_token_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    label_smoothing: float = 0.1,
    unmasked_weight: float = 0.1,
) -> torch.Tensor:
    """MaskGIT loss: label-smoothed CE on every position, weight 1 on masked and `unmasked_weight` on the
    others, normalised by the weight sum."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none", label_smoothing=label_smoothing)
    weights = torch.where(mask, 1.0, unmasked_weight)
    return (ce * weights).sum() / weights.sum()
