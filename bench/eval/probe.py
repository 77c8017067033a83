"""Linear probe of a frozen tokenizer encoder (the paper's Figure 4b: linear-probing accuracy against K).

    out = linear_probe(tok, train_ds, val_ds, num_train=50_000, num_val=10_000, info=info)   # {"probe_top1": ...}

Features (`features`, one [width] vector per image; the paper says only "global pooling", so where is a setting):
    latent_mean         (default) the encoder's outputs at the K latent tokens after ln_post, before the output
                        projection (conv_out) and the quantiser, averaged over the K tokens
    latent_mean_pre_ln  the same K tokens before ln_post (the last transformer block's output), averaged
    patch_mean          the last transformer block's outputs at the g*g patch tokens (not the class token),
                        averaged; the encoder applies ln_post to the latent tokens only, so these have no final norm
They are read with forward hooks (on `encoder.ln_post`, or the last block for patch_mean); the model is not changed.
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

from .intervals import wilson_interval
from .run import SINGLE_PROCESS, check_image_size, eval_batches, on_main

FEATURES = {
    "latent_mean": "mean over the K latent tokens of the encoder's ln_post output",
    "latent_mean_pre_ln": "mean over the K latent tokens of the encoder's last block output (before ln_post)",
    "patch_mean": "mean over the patch tokens of the encoder's last block output (no final norm)",
}
DEFAULT_FEATURES = "latent_mean"
PROBE_INTERVAL = (
    "95% Wilson score interval of top-1 over the {n} validation images (a binomial proportion; the "
    "fitted classifier held fixed)"
)


def check_features(features: str) -> str:
    """`features` if it is one of FEATURES, else a one-line ValueError naming the choices."""
    if features not in FEATURES:
        raise ValueError(f"probe features {features!r}: choose one of {', '.join(FEATURES)}")
    return features


def _feature_hook(tokenizer: models.TiTok, features: str, captured: list):
    """Registers the forward hook that puts the [B, N, width] tokens `features` averages into `captured`; returns
    its handle."""
    enc = tokenizer.encoder
    if features == "latent_mean":
        return enc.ln_post.register_forward_hook(lambda m, i, o: captured.append(o))
    if features == "latent_mean_pre_ln":  # ln_post's input is the K latent tokens' slice of the last block output
        return enc.ln_post.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    # patch_mean: the sequence is [CLS, g*g patches, K latents]
    k = tokenizer.config.num_latent_tokens
    last = enc.transformer[-1] if len(enc.transformer) else enc.ln_pre
    return last.register_forward_hook(lambda m, i, o: captured.append(o[:, 1 : o.shape[1] - k]))


@torch.no_grad()
def encoder_features(tokenizer: models.TiTok, images: torch.Tensor, features: str = DEFAULT_FEATURES) -> torch.Tensor:
    """[B, width] float32 probe features of `images` (`features`: one of FEATURES, see the module doc)."""
    captured: list[torch.Tensor] = []
    handle = _feature_hook(tokenizer, check_features(features), captured)
    try:
        tokenizer.forward_encoder(images)
    finally:
        handle.remove()
    return captured[0].float().mean(1)


def extract_features(
    tokenizer: models.TiTok,
    dataset: Dataset,
    num_images: int,
    *,
    batch_size: int = 64,
    info: DistInfo = SINGLE_PROCESS,
    num_workers: int = 0,
    features: str = DEFAULT_FEATURES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, width] float32, labels [N]) of the first `num_images` images, in dataset order on every rank."""
    check_features(features)
    check_image_size(dataset, tokenizer.config.image_size, "the tokenizer")
    tokenizer = tokenizer.to(info.device).eval()
    width = tokenizer.encoder.ln_post.normalized_shape[0]
    feats = [torch.zeros(0, width, device=info.device)]
    labels = [torch.zeros(0, dtype=torch.long, device=info.device)]
    for images, y in eval_batches(dataset, num_images, batch_size, info, num_workers, desc="probe features"):
        feats.append(encoder_features(tokenizer, images, features))
        labels.append(y.long())
    return gather_tensors(torch.cat(feats)), gather_tensors(torch.cat(labels))


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int = 100, weight_decay: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
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


def linear_probe(
    tokenizer: models.TiTok,
    train_dataset: Dataset,
    val_dataset: Dataset,
    *,
    num_train: int,
    num_val: int,
    info: DistInfo = SINGLE_PROCESS,
    epochs: int = 100,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    num_workers: int = 0,
    features: str = DEFAULT_FEATURES,
) -> dict:
    """Top-1 of a linear classifier on frozen encoder features (`features`: one of FEATURES):
    {"probe_top1": accuracy in [0, 1], "probe_top1_lo" / "_hi": its 95% Wilson score interval over the validation
    images, the classifier held fixed (PROBE_INTERVAL)}. Both datasets should be preprocessed for evaluation
    (centre crops, no augmentation)."""
    kw = dict(batch_size=batch_size, info=info, num_workers=num_workers, features=check_features(features))
    train_x, train_y = extract_features(tokenizer, train_dataset, num_train, **kw)
    val_x, val_y = extract_features(tokenizer, val_dataset, num_val, **kw)
    num_classes = getattr(train_dataset, "num_classes", None) or int(train_y.max()) + 1

    def compute() -> dict:
        mean, std, weight, bias = fit_linear_probe(
            train_x, train_y, num_classes, epochs=epochs, weight_decay=weight_decay
        )
        pred = (((val_x - mean) / std) @ weight.T + bias).argmax(1)
        correct = int((pred == val_y).sum().item())
        lo, hi = wilson_interval(correct, len(val_y))
        return {"probe_top1": (pred == val_y).float().mean().item(), "probe_top1_lo": lo, "probe_top1_hi": hi}

    return on_main(compute, info)
