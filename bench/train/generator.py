"""Generator training: MaskGIT (arccos masking, label smoothing, unmasked-token weight, class dropout for
guidance) on the tokens of a frozen VQ tokenizer: encoded on the fly from each batch's centre crops, or read from
the pretokenize stage's tokens (`tokens`: bench/train/pretokenize.py, bench/data/tokens.py). `generator_objective`
is the loss of both (what the speed benchmark times too), `train_generator` the stage.

A batch is (inputs, labels, crop): inputs are centre-crop images [B, 3, S, S] (on the fly) or the token ids of
each image's crops [B, C, K] (pretokenized), and crop [B] is the crop each sample trains on this step
(bench.data.tokens.crop_choice: a pure function of seed, step and position; on the fly, crop 1 is the horizontal
flip). Both sources draw the same crops from the same seed, and the loader's order is the same over the same
images, so a pretokenized run trains on the tokens the on-the-fly run computes (up to float noise in the encoder),
and either resumes exactly.
"""

from __future__ import annotations

import os

import torch

import models
from bench.core import dist as D
from bench.data.tokens import TokenDataset, crop_choice
from models.sampling import random_masking

from .frozen_tokenizer import load_tokenizer, tokenizer_identity
from .loop import train
from .losses import masked_token_loss
from .recipes import GeneratorTrainConfig
from .stage import Log, StageResult, dataset_of, finish, loader_batches, local_batch, start_stage
from .trainer import Objective


def generator_objective(
    cfg: GeneratorTrainConfig, tokenizer: models.TiTok | None, generator: models.MaskGITGenerator
) -> Objective:
    """The MaskGIT loss of `generator` on each batch's tokens: those the frozen `tokenizer` gives the batch's
    images (flipped where crop is 1), or, with `tokenizer` None, the pretokenized ids of each sample's crop."""
    mask_id = generator.mask_token_id
    dropout = generator.config.class_label_dropout

    def tokens(inputs: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
        if tokenizer is None:  # [B, C, K]: the ids of each sample's crops
            return inputs[torch.arange(len(inputs), device=inputs.device), crop]
        # the reference trains on centre crops with random horizontal flips
        images = torch.where((crop == 1)[:, None, None, None], inputs.flip(-1), inputs)
        with torch.no_grad():
            return tokenizer.encode(images)

    def loss(name, wrapped, batch, step, cache):
        inputs, labels, crop = batch
        ids = tokens(inputs, crop)
        masked, mask = random_masking(ids, mask_id)
        drop = torch.rand(len(labels), device=labels.device) < dropout
        logits = wrapped["generator"](masked, labels, drop)
        total = masked_token_loss(logits, ids, mask, cfg.label_smoothing, cfg.unmasked_weight)
        acc = ((logits.argmax(-1) == ids) & mask).sum() / mask.sum()  # no boolean indexing: it reads the device
        return total, {"generator/loss": total.detach(), "generator/masked_acc": acc}

    return Objective(
        modules={"generator": generator},
        optim={"generator": cfg.optim},
        loss=loss,
        ema_of="generator",
        frozen={"tokenizer": tokenizer} if tokenizer is not None else {},
    )


def generator_batches(dataset, num_crops: int, cfg: GeneratorTrainConfig, info: D.DistInfo, num_workers: int = 0):
    """The loop's batch source over `dataset` (centre-crop images, or a TokenDataset): this rank's (inputs,
    labels, crop) of each step from the start step on, crop drawn by crop_choice over the global batch."""
    batch = cfg.loop.batch_size
    local = local_batch(batch, info)
    mine = slice(info.rank * local, (info.rank + 1) * local)
    stepped = loader_batches(dataset, batch, cfg.loop.seed, info, num_workers)

    def batches(start_step: int):
        for step, (inputs, labels) in stepped(start_step):
            yield inputs, labels, crop_choice(cfg.loop.seed, step, batch, num_crops)[mine].to(info.device)

    return batches


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
    if cfg.tokens:
        dataset = TokenDataset(cfg.tokens)
        dataset.check(
            tokenizer=tokenizer_identity(cfg.tokenizer),
            data=cfg.data,
            num_tokens=t.num_latent_tokens,
            codebook_size=t.codebook_size,
        )
        objective = generator_objective(cfg, None, generator)
        batches = generator_batches(dataset, dataset.num_crops, cfg, info)  # memory-mapped rows: no workers
        del tokenizer
    else:
        dataset = dataset_of(cfg.data, "train")
        objective = generator_objective(cfg, tokenizer, generator)
        batches = generator_batches(dataset, 2, cfg, info, cfg.data.num_workers)  # crop 1: the flip
    result = train(objective, batches, cfg.loop, out_dir, info, log)
    meta = {"stage": "generator", "tokenizer": cfg.tokenizer, **({"tokens": str(cfg.tokens)} if cfg.tokens else {})}
    return finish(result, out_dir, info, {}, meta)
