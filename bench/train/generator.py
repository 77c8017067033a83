"""Generator training: MaskGIT (arccos masking, label smoothing, unmasked-token weight, class dropout for
guidance) on the tokens of a frozen VQ tokenizer, produced on the fly. `generator_objective` is the loss (what the
speed benchmark times too), `train_generator` the stage."""

from __future__ import annotations

import os

import torch

import models
from models.sampling import random_masking

from .loop import Objective, train
from .losses import masked_token_loss
from .recipes import GeneratorTrainConfig
from .tokenizer import Log, StageResult, batches_for, finish, start_stage


def load_tokenizer(source: str) -> models.TiTok:
    """A frozen tokenizer from our checkpoint, a released name, a hub-style folder or an official file."""
    tokenizer = models.from_pretrained(source)
    if not isinstance(tokenizer, models.TiTok):
        raise ValueError(f"{source} is a {tokenizer.kind}, not a TiTok tokenizer")
    return tokenizer.eval().requires_grad_(False)


def generator_objective(cfg: GeneratorTrainConfig, tokenizer: models.TiTok,
                        generator: models.MaskGITGenerator) -> Objective:
    """The MaskGIT loss of `generator` on the tokens the frozen `tokenizer` gives each (flipped) batch."""
    mask_id = generator.mask_token_id
    dropout = generator.config.class_label_dropout

    def loss(name, wrapped, batch, step, cache):
        images, labels = batch
        # the reference trains on centre crops with random horizontal flips
        flip = torch.rand(len(images), device=images.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        with torch.no_grad():
            ids = tokenizer.encode(images)
        masked, mask = random_masking(ids, mask_id)
        drop = torch.rand(len(labels), device=labels.device) < dropout
        logits = wrapped["generator"](masked, labels, drop)
        total = masked_token_loss(logits, ids, mask, cfg.label_smoothing, cfg.unmasked_weight)
        acc = (logits.argmax(-1) == ids)[mask].float().mean()
        return total, {"generator/loss": total.detach(), "generator/masked_acc": acc}

    return Objective(modules={"generator": generator}, optim={"generator": cfg.optim}, loss=loss,
                     ema_of="generator", frozen={"tokenizer": tokenizer})


def train_generator(cfg: GeneratorTrainConfig, out_dir: str | os.PathLike, log: Log = None) -> StageResult:
    info = start_stage(cfg.device, cfg.loop.seed)
    if not cfg.tokenizer:
        raise ValueError("generator training needs `tokenizer`: a tokenizer checkpoint or released name")
    tokenizer = load_tokenizer(cfg.tokenizer)
    if not tokenizer.is_vq:
        raise ValueError(f"{cfg.tokenizer} is a VAE tokenizer; MaskGIT generators need discrete (VQ) tokens")
    t = tokenizer.config
    overrides = dict(cfg.model_overrides, num_tokens=t.num_latent_tokens, codebook_size=t.codebook_size)
    generator = models.build(cfg.model, **overrides)
    batches = batches_for(cfg.data, cfg.loop.batch_size, cfg.loop.seed, info, train_split=True, train_augment=False)
    result = train(generator_objective(cfg, tokenizer, generator), batches, cfg.loop, out_dir, info, log)
    return finish(result, out_dir, info, {}, {"stage": "generator", "tokenizer": cfg.tokenizer})
