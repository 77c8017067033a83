"""bench.speed.flops: the analytic FLOP counter matches a hand count and torch's FlopCounterMode, and grows with K."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import models
from bench.perceptual import LPIPS, ConvNeXtLogits
from bench.speed import factories
from bench.speed import flops as FL
from bench.speed.scaling import scaling_flops
from bench.train.losses import NLayerDiscriminator
from models.maskgit_vqgan import VQGANConfig
from tests.speed.toys import toy_pair


def counted(fn) -> int:
    """torch's own count of the matmul/conv FLOPs of fn (SDPA through the math backend, which it can see)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as mode, torch.no_grad():
        fn()
    return mode.get_total_flops()


def test_flops_hand_count_tiny_generator():
    # BERT layout, K = 3 tokens + class token (n = 4), width 8, MLP 16, one layer, codebook 5
    c = models.GeneratorConfig(
        hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16, num_tokens=3, codebook_size=5, num_classes=2
    )
    qkv, scores, weighted_sum, out = 2 * 4 * 8 * 24, 2 * 4 * 4 * 8, 2 * 4 * 4 * 8, 2 * 4 * 8 * 8
    mlp, head = 2 * 4 * 8 * 16 * 2, 2 * 3 * 8 * 5
    assert FL.generator_forward(c) == qkv + scores + weighted_sum + out + mlp + head == 4848
    settings = models.SamplerSettings(num_steps=4, guidance_scale=2.0, guidance_decay="linear")
    assert FL.generator_forwards(settings) == 1 + 2 * 3  # the linear schedule's first step has no guidance
    gen = models.build_from_config(c).eval()
    assert counted(lambda: gen(torch.zeros(1, 3, dtype=torch.long), torch.tensor([1]))) == 4848
    assert counted(lambda: gen.generate(torch.tensor([1]), **settings.__dict__)) == 7 * 4848


def test_flops_hand_count_tiny_pixel_decoder():
    # f2 VQGAN: widths (32, 64), one res block per level, z 8 channels, 2x2 code grid -> 4x4 image
    cfg = VQGANConfig(hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, z_channels=8, codebook_size=4)

    def conv(hw, cin, cout, k):
        return 2 * hw * hw * cin * cout * k * k

    hand = (
        conv(2, 8, 64, 3)
        + 2 * conv(2, 64, 64, 3)  # conv_in, mid block
        + 2 * conv(2, 64, 64, 3)
        + conv(4, 64, 64, 3)  # up[1] block, upsample conv
        + conv(4, 64, 32, 3)
        + conv(4, 32, 32, 3)
        + conv(4, 32, 32, 1)  # up[0] block with its shortcut
        + conv(4, 32, 3, 3)
    )  # conv_out
    assert FL.vqgan_decoder(cfg, 2) == hand
    decoder = models.build(
        "MaskGIT-VQGAN", hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, z_channels=8, codebook_size=4
    ).decoder
    assert counted(lambda: decoder(torch.randn(1, 8, 2, 2))) == hand


@pytest.mark.parametrize("name", ["TiTok-L-32", "TiTok-BL-64-VQ", "TiTok-BL-64-VAE", "TA-TiTok-BL-32-VQ"])
def test_flops_match_torch_counter_for_tokenizers(name):
    torch.manual_seed(0)
    tok = factories.build_tokenizer(name, {"decoder_size": "toy-B"}, toy=True)
    c = tok.config
    images = torch.rand(1, 3, c.image_size, c.image_size)
    text = torch.randn(1, c.text_tokens, c.text_dim) if c.text_tokens else None
    tokens = tok.encode(images)
    assert counted(lambda: tok.encode(images)) == FL.titok_encode(c)
    assert counted(lambda: tok.decode(tokens, text=text)) == FL.titok_decode(c)


def test_flops_match_torch_counter_for_generators_and_training_parts():
    tok, gen = toy_pair(generator="MaskGIT-UViT:TiTok-S-128")
    settings = gen.config.sampler.updated(num_steps=3)
    assert counted(lambda: gen.generate(torch.tensor([4]), **settings.__dict__)) == FL.generation(gen.config, settings)
    teacher = factories.teacher_for(factories.build_tokenizer("TiTok-L-32", {"pixel_decoder": False}, toy=True))
    assert counted(lambda: teacher.encode(torch.rand(1, 3, 64, 64))) == FL.vqgan_encode(teacher.config, 64)
    disc = NLayerDiscriminator(32, groups=8)
    assert counted(lambda: disc(torch.rand(1, 3, 64, 64))) == FL.discriminator_forward(64, 32)


def test_flops_match_torch_counter_for_perceptual_networks():
    images = torch.rand(1, 3, 32, 32)
    assert counted(lambda: ConvNeXtLogits(allow_random=True, resolution=64)(images)) == FL.convnext_small(64)
    assert counted(lambda: LPIPS(allow_random=True)(images, images)) == (2 * FL.lpips_features(32) + FL.lpips_heads(32))


def test_flops_grow_with_k():
    costs = [FL.titok_encode(factories.tokenizer_config(f"TiTok-B-{k}")) for k in (16, 64, 256)]
    assert costs[0] < costs[1] < costs[2]
    rows = scaling_flops(sizes=["L"], ks=[16, 32, 256])
    generate = [r for r in rows if r["task"] == "generate"]
    assert generate[0]["flops_x"] == 1.0 < generate[1]["flops_x"] < generate[2]["flops_x"]
    # the released pair: 15 generator forwards (8 steps, linear guidance) + L decoder + pixel decoder
    l32 = factories.tokenizer_config("TiTok-L-32")
    gen = models.VARIANTS["MaskGIT-ViT:TiTok-L-32"].config
    assert generate[1]["gflop_per_item"] * 1e9 == 15 * FL.generator_forward(gen) + FL.titok_decode(l32)
