"""Frozen encodes give the same codes and tokens whatever autocast they are called in: they produce the training
targets of stage 1 and the generator's tokens, which the reference computes in fp32 (its tokenizer runs outside
autocast)."""

import pytest
import torch

import models

TOY_TEACHER = {"hidden_channels": 32, "channel_mult": (1, 1, 2, 2, 2), "z_channels": 32, "codebook_size": 64}
TOY_TOKENIZER = {
    "encoder_size": "toy-S",
    "decoder_size": "toy-S",
    "patch_size": 8,
    "image_size": 32,
    "codebook_size": 64,
    "token_size": 8,
}


def _images(n, size, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_teacher_codes_ignore_autocast(dtype):
    torch.manual_seed(0)
    teacher = models.build("MaskGIT-VQGAN", **TOY_TEACHER).eval()
    images = _images(16, 64)
    exact = teacher.encode(images)
    with torch.no_grad():
        latents = teacher.encoder(images)
    with torch.autocast("cpu", dtype=dtype):
        mixed = teacher.encode(images)
        lookup = teacher.quantize.codes(latents)  # the nearest-code search alone, on fp32 latents
    assert torch.equal(mixed, exact)
    assert torch.equal(lookup, exact)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tokenizer_tokens_ignore_autocast(dtype):
    torch.manual_seed(0)
    tokenizer = models.build("TiTok-S-32", **TOY_TOKENIZER, quantizer="vq", two_stage=False).eval()
    images = _images(16, 32)
    exact = tokenizer.encode(images)
    with torch.autocast("cpu", dtype=dtype):
        assert torch.equal(tokenizer.encode(images), exact)
    assert tokenizer.encode(images.to(dtype)).dtype == torch.long  # half-precision images are upcast, not refused
