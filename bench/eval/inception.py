"""torch-fidelity's InceptionV3 (the TF 2015-12-05 graph port) with its weights from bench.weights.

    feats = InceptionFeatures("cuda")(images_uint8_nchw)   # .pool [B,2048], .logits [B,1008], .spatial [B,2023]

The network, resize and scaling are torch-fidelity's own code (FeatureExtractorInceptionV3); this module adds
two forward hooks:
- pool: the output of `AvgPool` (= torch-fidelity's "2048" feature, TF `pool_3:0`), read before the float32
  cast so a float64 network gives float64 features;
- spatial (sFID): ADM reads TF `mixed_6/conv:0` and keeps its first 7 channels (17x17x7 = 2023). TF's
  mixed, mixed_1..mixed_10 are torch-fidelity's Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e, 7a, 7b, 7c, so
  mixed_6 is Mixed_6d (not 6e), and its first `conv` is the 1x1 branch: `Mixed_6d.branch1x1` (conv + BN +
  ReLU; torch-fidelity's own TF-conversion table maps mixed_6/conv to Mixed_6d.branch1x1). TF tensors are
  NHWC, so the 2023 values are flattened in (row, column, channel) order, as ADM's reference batches are.
logits are torch-fidelity's "logits_unbiased" (pool @ fc.weight^T, no bias), the input of ADM's Inception Score.

Stand-in: with allow_random and no weights file, a seeded random-init file with torch-fidelity's 566 tensor
names and shapes is written once to the cache (weights.standin_path), so the real code path runs offline;
`.random` is then True and every number from it must be tagged.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from bench import weights
from bench.core.io import atomic_file

TF_EXTRACTOR_NAME = "inception-v3-compat"  # torch-fidelity's registry name for this network
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023
STANDIN_SEED = 0


class InceptionOutput(NamedTuple):
    pool: torch.Tensor  # [B, 2048] float64
    logits: torch.Tensor  # [B, 1008] float64 (unbiased: no fc bias)
    spatial: torch.Tensor  # [B, 2023] float64, sFID features


def standin_inception_weights(seed: int = STANDIN_SEED) -> Path:
    """A random-init weights file for torch-fidelity's InceptionV3 (made once, atomically)."""
    path = weights.standin_path(weights.INCEPTION)
    if path.is_file():
        return path
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # torchvision's InceptionV3 has the same parameter and buffer names as torch-fidelity's port.
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                # He init keeps activations O(1) through ~90 conv+ReLU layers (BatchNorm is the identity in eval
                # mode with fresh running stats), so features neither vanish nor overflow.
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=m.in_features**-0.5)
                nn.init.zeros_(m.bias)
    state = net.state_dict()
    assert len(state) == 566, len(state)
    with atomic_file(path) as f:  # concurrent makers write identical bytes; the rename keeps readers safe
        torch.save(state, f)
    return path


def as_uint8_nchw(images) -> torch.Tensor:
    """torch uint8 [B,3,H,W] as is; numpy/torch uint8 [B,H,W,3] (the ADM .npz layout) transposed."""
    x = torch.from_numpy(np.asarray(images)) if not torch.is_tensor(images) else images
    if x.dtype != torch.uint8:
        raise TypeError(
            f"Inception features need uint8 images in [0, 255], got {x.dtype}; convert first, e.g. "
            "(x.clamp(0, 1) * 255).round().to(torch.uint8)"
        )
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images [B,3,H,W] or [B,H,W,3], got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {tuple(x.shape)}")
    return x


class InceptionFeatures:
    """Pool, unbiased-logit and sFID spatial features of uint8 images, through torch-fidelity's network.

    dtype "float32" (default) is what ADM's TensorFlow evaluator and torch-fidelity run; "float64" runs the
    whole network in double (torch-fidelity 0.4.0 maps its own "float64" option to float32, so it is set here
    by hand). batch_size bounds memory; outputs stay on `device`.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        allow_random: bool = False,
        dtype: str = "float32",
        batch_size: int = 64,
    ):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        r = weights.resolve(weights.INCEPTION, allow_random)
        self.random = r.random
        self.weights_path = r.path or standin_inception_weights()
        self.device = torch.device(device)
        self.batch_size = batch_size
        net = FeatureExtractorInceptionV3(
            TF_EXTRACTOR_NAME, ["2048", "logits_unbiased"], feature_extractor_weights_path=str(self.weights_path)
        )
        if dtype == "float64":
            net.double()
            net.feature_extractor_internal_dtype = torch.float64
        self.net = net.to(self.device).eval().requires_grad_(False)
        self._captured: dict[str, torch.Tensor] = {}
        net.AvgPool.register_forward_hook(lambda m, i, o: self._captured.__setitem__("pool", o))
        net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: self._captured.__setitem__("spatial", o))

    @torch.no_grad()
    def __call__(self, images) -> InceptionOutput:
        x = as_uint8_nchw(images)
        pools, logits, spatials = [], [], []
        double = self.net.feature_extractor_internal_dtype == torch.float64
        for chunk in x.split(self.batch_size):
            _, lg = self.net(chunk.to(self.device))
            pool = self._captured["pool"].flatten(1)
            pools.append(pool.double())
            # torch-fidelity casts its logits to float32; in double mode recompute them (pool @ W^T, no bias).
            logits.append(pool @ self.net.fc.weight.T if double else lg.double())
            sp = self._captured["spatial"][:, :SPATIAL_CHANNELS]  # [b, 7, 17, 17]
            spatials.append(sp.permute(0, 2, 3, 1).reshape(sp.shape[0], -1).double())  # TF NHWC order
            self._captured.clear()
        return InceptionOutput(torch.cat(pools), torch.cat(logits), torch.cat(spatials))
