"""Pretrained networks for perceptual losses and metrics, built from the weights registry.

    lpips = LPIPS()                    # per-image distance [B] of [0,1] images
    cnx = ConvNeXtLogits()             # ConvNeXt-Small logits [B,1000] of [0,1] images
    loss = convnext_perceptual_loss(cnx, x_hat, x)   # TiTok stage 2's "perceptual" loss (docs/reference.md)

Both are frozen (eval mode, requires_grad False) but differentiable with respect to their inputs. With
allow_random=True a missing file is replaced by a seeded random initialisation: `.random` is then True and
every number computed with it must be tagged (weights.random=true).

LPIPS (Zhang et al. 2018, v0.1 "lin" on VGG16): inputs mapped to [-1, 1] and through the fixed scaling layer
(shift [-.030, -.088, -.188], scale [.458, .448, .450]); VGG16 features after relu1_2, relu2_2, relu3_3, relu4_3,
relu5_3; each feature vector divided by its L2 norm over channels (+1e-10); squared differences weighted by the
learned non-negative 1x1 layers; spatial mean; sum over the five layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bench import weights

_VGG_CUTS = (4, 9, 16, 23, 30)  # vgg16.features indices just after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
STANDIN_SEED = 0


def _load_state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _vgg16_features() -> nn.Sequential:
    """torchvision's vgg16().features (same layer indices, so "features.N" keys load), without building the
    120M-parameter classifier that LPIPS never uses; torchvision's initialisation for the stand-in."""
    layers, c_in = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        conv = nn.Conv2d(c_in, v, 3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU(inplace=True)]
        c_in = v
    return nn.Sequential(*layers)


def _freeze(m: nn.Module) -> nn.Module:
    m.eval()
    m.requires_grad_(False)
    return m


class LPIPS(nn.Module):
    def __init__(self, allow_random: bool = False):
        super().__init__()
        vgg_w = weights.resolve(weights.VGG16, allow_random)
        lin_w = weights.resolve(weights.LPIPS_VGG, allow_random)
        self.random = vgg_w.random or lin_w.random
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(STANDIN_SEED)  # the random stand-in is the same every time
            features = _vgg16_features()
            lins = [nn.Conv2d(c, 1, 1, bias=False) for c in _LPIPS_CHANNELS]
            for lin in lins:  # LPIPS keeps its learned weights non-negative; so does the stand-in
                nn.init.uniform_(lin.weight, 0.0, 2.0 / lin.in_channels)
        if vgg_w.path:
            state = _load_state(vgg_w.path)
            features.load_state_dict({k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")})
        if lin_w.path:
            state = _load_state(lin_w.path)
            for i, lin in enumerate(lins):  # upstream keys: lin{i}.model.1.weight (model = Dropout, Conv)
                lin.weight.data.copy_(state[f"lin{i}.model.1.weight"])
        starts = (0,) + _VGG_CUTS[:-1]
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in zip(starts, _VGG_CUTS))
        self.lins = nn.ModuleList(lins)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        _freeze(self)

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen: no dropout, fixed statistics

    def _features(self, x):
        h = ((x * 2 - 1) - self.shift) / self.scale
        out = []
        for s in self.slices:
            h = s(h)
            out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image distance [B] between two batches of [0,1] images [B,3,H,W]."""
        fx, fy = self._features(x), self._features(y)
        return sum(lin((a - b) ** 2).mean((1, 2, 3)) for lin, a, b in zip(self.lins, fx, fy))


class ConvNeXtLogits(nn.Module):
    """torchvision ConvNeXt-Small (IMAGENET1K_V1) logits of [0,1] images, resized to 224 (bilinear, antialias)
    and ImageNet-normalised."""

    def __init__(self, allow_random: bool = False, resolution: int = 224):
        super().__init__()
        w = weights.resolve(weights.CONVNEXT_SMALL, allow_random)
        self.random = w.random
        self.resolution = resolution
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(STANDIN_SEED)
            self.net = torchvision.models.convnext_small(weights=None)
        if w.path:
            self.net.load_state_dict(_load_state(w.path))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        _freeze(self)

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen: stochastic depth stays off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(
                x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False, antialias=True
            )
        return self.net((x - self.mean) / self.std)

    def perceptual_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return convnext_perceptual_loss(self, x, y)


def convnext_perceptual_loss(net: ConvNeXtLogits, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE between the ConvNeXt-Small logits of x (e.g. the reconstruction) and y (the target)."""
    return F.mse_loss(net(x), net(y))
