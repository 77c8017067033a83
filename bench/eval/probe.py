"""Linear probe of a frozen tokenizer encoder (the paper's Figure 4b: linear-probing accuracy against K).

    out = linear_probe(tok, train_ds, val_ds, num_train=50_000, num_val=10_000, info=info)   # {"probe_top1": ...}

Features: the encoder's outputs at the K latent tokens after ln_post, before the output projection (conv_out) and
the quantiser, averaged over the K tokens: one [width] vector per image. They are read with a forward hook on
`encoder.ln_post`, which the encoder applies to the latent tokens only; the model is not changed.
Classifier: features standardised with the training features' mean and std (MAE's affine-free BatchNorm in
front of its linear head), then multinomial logistic regression from zero weights with an L2 penalty, fitted
full-batch with L-BFGS (strong-Wolfe line search) for `epochs` iterations: deterministic, no learning rate or
batch order to tune. The paper's probe recipe (MAE-style SGD/LARS) is not reproduced; top-1 on the validation
features is returned.
Sharding: features are extracted on every rank's slice of the images and gathered; the fit runs on the main rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

import models
from bench.core.dist import DistInfo, gather_tensors

from .run import SINGLE_PROCESS, check_image_size, eval_batches, on_main


@torch.no_grad()
def encoder_features(tokenizer: models.TiTok, images: torch.Tensor) -> torch.Tensor:
    """[B, width]: the mean over the K latent tokens of the encoder's ln_post output."""
    captured = []
    handle = tokenizer.encoder.ln_post.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        tokenizer.forward_encoder(images)
    finally:
        handle.remove()
    return captured[0].float().mean(1)


def extract_features(tokenizer: models.TiTok, dataset: Dataset, num_images: int, *, batch_size: int = 64,
                     info: DistInfo = SINGLE_PROCESS, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, width] float32, labels [N]) of the first `num_images` images, in dataset order on every rank."""
    check_image_size(dataset, tokenizer.config.image_size, "the tokenizer")
    tokenizer = tokenizer.to(info.device).eval()
    width = tokenizer.encoder.ln_post.normalized_shape[0]
    feats = [torch.zeros(0, width, device=info.device)]
    labels = [torch.zeros(0, dtype=torch.long, device=info.device)]
    for images, y in eval_batches(dataset, num_images, batch_size, info, num_workers, desc="probe features"):
        feats.append(encoder_features(tokenizer, images))
        labels.append(y.long())
    return gather_tensors(torch.cat(feats)), gather_tensors(torch.cat(labels))


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int = 100,
                     weight_decay: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, std, weight [C, D], bias [C]) of a standardised multinomial logistic regression (see module doc)."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return mean, std, weight.detach(), bias.detach()


def linear_probe(tokenizer: models.TiTok, train_dataset: Dataset, val_dataset: Dataset, *, num_train: int,
                 num_val: int, info: DistInfo = SINGLE_PROCESS, epochs: int = 100, weight_decay: float = 1e-4,
                 batch_size: int = 64, num_workers: int = 0) -> dict:
    """Top-1 of a linear classifier on frozen encoder features: {"probe_top1": accuracy in [0, 1]}.
    Both datasets should be preprocessed for evaluation (centre crops, no augmentation)."""
    kw = dict(batch_size=batch_size, info=info, num_workers=num_workers)
    train_x, train_y = extract_features(tokenizer, train_dataset, num_train, **kw)
    val_x, val_y = extract_features(tokenizer, val_dataset, num_val, **kw)
    num_classes = getattr(train_dataset, "num_classes", None) or int(train_y.max()) + 1

    def compute() -> dict:
        mean, std, weight, bias = fit_linear_probe(train_x, train_y, num_classes, epochs=epochs,
                                                   weight_decay=weight_decay)
        pred = (((val_x - mean) / std) @ weight.T + bias).argmax(1)
        return {"probe_top1": (pred == val_y).float().mean().item()}

    return on_main(compute, info)
