"""TiTokConfig.init_gain: the toy-width init (weights ~ trunc-normal(gain / sqrt(fan_in))) beside the reference's
trunc-normal(0.02), and the reason it exists: at toy widths the reference init leaves the latents nearly blind to
the image (the stage-1 plateau that docs/measurements.md describes)."""

import pytest
import torch

import models
from bench.data.synthetic import SyntheticShapes

TOY = dict(
    encoder_size="toy-S",
    decoder_size="toy-S",
    image_size=32,
    patch_size=8,
    decoder_patch_size=8,
    codebook_size=8,
    token_size=16,
    pixel_decoder=False,
    vqgan=models.VQGANConfig(hidden_channels=32, channel_mult=(1, 1, 2, 2), z_channels=32, codebook_size=16),
)


def _toy(init_gain):
    torch.manual_seed(0)
    return models.build("TiTok-S-16", init_gain=init_gain, **TOY)


@pytest.mark.parametrize(
    "name, fan_in",
    [
        ("encoder.transformer.0.attn.out_proj.weight", 64),
        ("encoder.transformer.1.mlp.c_proj.weight", 256),
        ("encoder.transformer.0.attn.in_proj_weight", 64),
        ("encoder.patch_embed.weight", 3 * 8 * 8),
        ("decoder.decoder_embed.weight", 16),
    ],
)
def test_init_gain_scales_every_weight_by_its_fan_in(name, fan_in):
    reference, scaled = (dict(_toy(g).named_parameters())[name].detach() for g in (None, 1.0))
    assert scaled.std().item() == pytest.approx(0.88 / fan_in**0.5, rel=0.15)  # trunc-normal at 2 std: 0.88 std
    if "in_proj" not in name:  # the reference keeps Xavier for the fused projection
        assert reference.std().item() == pytest.approx(0.02 * 0.88, rel=0.15)


def test_reference_init_is_the_default():
    assert models.TiTokConfig().init_gain is None
    explicit = _toy(None).state_dict()
    torch.manual_seed(0)
    default = models.build("TiTok-S-16", **TOY).state_dict()
    assert all(torch.equal(explicit[k], default[k]) for k in explicit)


@pytest.mark.parametrize("gain", [0.0, -1.0])
def test_init_gain_must_be_positive(gain):
    with pytest.raises(ValueError, match="init_gain"):
        models.TiTokConfig(init_gain=gain)


def _image_share_of_latents(model) -> float:
    """The across-image share of the encoder's latent output: ~0 means every image gets the same latents."""
    images = torch.stack([SyntheticShapes(split="val", image_size=32)[i][0] for i in range(32)])
    with torch.no_grad():
        z = model.forward_encoder(images).flatten(1)
    return (z.std(0).pow(2).mean() / z.pow(2).mean()).sqrt().item()


def test_init_gain_zero_means_the_patch_filters():
    filters = _toy(1.0).encoder.patch_embed.weight.detach()
    assert filters.mean(dim=(1, 2, 3)).abs().max() < 1e-6 < filters.std()
    assert _toy(None).encoder.patch_embed.weight.detach().mean(dim=(1, 2, 3)).abs().max() > 1e-4  # reference: not


def test_init_gain_lets_the_latents_see_the_image_at_toy_width():
    # measured here on toy-S K=16: 0.008 (reference), 0.051 (gain 1), 0.18 (gain 1 and zero-mean patch filters)
    reference, scaled = _image_share_of_latents(_toy(None)), _image_share_of_latents(_toy(1.0))
    assert reference < 0.03
    assert scaled > 10 * reference
