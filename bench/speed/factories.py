"""The models the benchmark times, built from registry names with random weights (models.build): any tokenizer
with overrides, a generator over its tokens, the random MaskGIT-VQGAN that decodes a stage-1-form tokenizer's proxy
codes, and the toy sizes of CPU smoke runs (64 px, patch 8, toy-S/B/L, a small VQGAN and generator)."""

from __future__ import annotations

import models
from models.maskgit_vqgan import VQGANConfig

# toy sizes for CPU smoke runs: 64 px, patch 8, an f8 MaskGIT-VQGAN with 32 base channels, a 4-layer generator
TOY_VQGAN = VQGANConfig(hidden_channels=32, channel_mult=(1, 1, 2, 2), z_channels=32, codebook_size=256)
TOY_GENERATOR = dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512)


def toy_tokenizer_overrides(config: models.TiTokConfig) -> dict:
    """Shrink a tokenizer to CPU toy sizes, keeping its family, K and size letters."""
    out = {
        "encoder_size": _toy(config.encoder_size),
        "decoder_size": _toy(config.decoder_size),
        "image_size": 64,
        "patch_size": 8,
        "decoder_patch_size": 8,
    }
    if config.two_stage:
        out["vqgan"] = TOY_VQGAN
    if config.text_tokens:
        out["text_dim"] = 32
    return out


def _toy(size: str) -> str:
    return size if size.startswith(("toy-", "tiny")) else f"toy-{size}"


def tokenizer_config(name: str, overrides: dict | None = None, toy: bool = False) -> models.TiTokConfig:
    """The config of a registry name with overrides (after the toy shrink when `toy`)."""
    base = models.resolve(name).config
    if not isinstance(base, models.TiTokConfig):
        raise ValueError(f"{name} is not a tokenizer")
    return models.variants.with_overrides(base, {**(toy_tokenizer_overrides(base) if toy else {}), **(overrides or {})})


def build_tokenizer(name: str, overrides: dict | None = None, toy: bool = False) -> models.TiTok:
    return models.build_from_config(tokenizer_config(name, overrides, toy)).eval()


def generator_config(
    name: str, tokenizer: models.TiTokConfig, overrides: dict | None = None, toy: bool = False
) -> models.GeneratorConfig:
    """A generator over the tokenizer's tokens (num_tokens and codebook_size follow it unless overridden)."""
    if tokenizer.quantizer != "vq":
        raise ValueError("MaskGIT generators need a VQ tokenizer; this one is a VAE")
    base = models.resolve(name).config
    if not isinstance(base, models.GeneratorConfig):
        raise ValueError(f"{name} is not a generator")
    return models.variants.with_overrides(
        base,
        {
            **(TOY_GENERATOR if toy else {}),
            "num_tokens": tokenizer.num_latent_tokens,
            "codebook_size": tokenizer.codebook_size,
            **(overrides or {}),
        },
    )


def build_generator(
    name: str, tokenizer: models.TiTok, overrides: dict | None = None, toy: bool = False
) -> models.MaskGITGenerator:
    return models.build_from_config(generator_config(name, tokenizer.config, overrides, toy)).eval()


def teacher_for(tokenizer: models.TiTok) -> models.MaskGITVQGAN | None:
    """A random MaskGIT-VQGAN to decode a stage-1-form tokenizer's proxy codes (None when it outputs pixels)."""
    if tokenizer.outputs_pixels:
        return None
    return models.build_from_config(tokenizer.config.vqgan).eval()
