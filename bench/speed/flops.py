"""Analytic FLOP counts of the TiTok models and of their training steps, per sample, from their configs (sizes, K,
resolution) and the stages' loss settings.

Convention: one multiply-add is 2 FLOPs, and only matrix products and convolutions are counted (linear layers,
1x1 and kxk convolutions, attention scores QK^T and the weighted sum AV, codebook distance products).
Norms, activations, softmax and elementwise ops are left out; they are a few percent of the total and are
memory-bound rather than compute-bound. This is the count `torch.utils.flop_counter.FlopCounterMode`
makes for the same forward (the tests check that), so achieved FLOP/s = count / measured time.

Training steps are counted as 3x the forward of the trained parts (forward + backward for the weights and
the inputs) plus 1x the forward of frozen parts that only feed them (the teacher, a frozen encoder) and 2x the
forward of frozen parts that gradients flow through (perceptual networks and the discriminator on a
reconstruction: forward + input gradient).
"""

from __future__ import annotations

from bench.train.recipes import GANConfig, PerceptualConfig
from models.generators import GeneratorConfig
from models.maskgit_vqgan import VQGANConfig
from models.sampling import SamplerSettings, guidance_weight
from models.titok import TiTokConfig


def linear(n: int, d_in: int, d_out: int) -> int:
    """n rows through a d_in -> d_out linear layer (or a 1x1 convolution over n positions)."""
    return 2 * n * d_in * d_out


def conv2d(out_hw: int, c_in: int, c_out: int, kernel: int, groups: int = 1) -> int:
    """A kxk convolution producing an out_hw x out_hw map."""
    return 2 * out_hw * out_hw * (c_in // groups) * c_out * kernel * kernel


def attention(n: int, width: int) -> int:
    """Scores QK^T and the weighted sum AV over all heads (heads x head_dim = width)."""
    return 2 * (2 * n * n * width)


def transformer_layer(n: int, width: int, hidden: int) -> int:
    """One block: fused QKV, attention, output projection, two-layer MLP."""
    return linear(n, width, 3 * width) + attention(n, width) + linear(n, width, width) + 2 * linear(n, width, hidden)


# ---- tokenizer -----------------------------------------------------------------------------------------------------
def titok_encode(c: TiTokConfig) -> int:
    """images -> tokens: patch embedding, the encoder ViT over [CLS, patches, K latents], the 1x1 output conv
    and (VQ) the codebook distance product."""
    enc, k = c.encoder, c.num_latent_tokens
    grid = c.image_size // c.patch_size
    n = 1 + grid * grid + k
    out_channels = c.token_size * (2 if c.quantizer == "vae" else 1)
    flops = conv2d(grid, 3, enc.width, c.patch_size)
    flops += enc.depth * transformer_layer(n, enc.width, int(enc.width * enc.mlp_ratio))
    flops += linear(k, enc.width, out_channels)
    if c.quantizer == "vq":
        flops += linear(k, c.token_size, c.codebook_size)
    return flops


def titok_decode(c: TiTokConfig, pixel_decoder: bool | None = None) -> int:
    """tokens -> output of the decoder: the ViT over [CLS, g*g mask tokens, K latents (, text)], then the head.
    Two-stage: proxy-code logits, and with the pixel decoder the soft codebook lookup + MaskGIT-VQGAN decoder.
    `pixel_decoder` overrides the config's (False: the stage-1 form, decode_proxy_codes)."""
    dec, k = c.decoder, c.num_latent_tokens
    grid = c.token_grid
    n = 1 + grid * grid + k + c.text_tokens
    flops = linear(k, c.token_size, dec.width) + linear(c.text_tokens, c.text_dim, dec.width)
    flops += dec.depth * transformer_layer(n, dec.width, int(dec.width * dec.mlp_ratio))
    cells = grid * grid
    if c.two_stage:
        flops += linear(cells, dec.width, 2 * dec.width) + linear(cells, 2 * dec.width, c.vqgan.codebook_size)
        if c.pixel_decoder if pixel_decoder is None else pixel_decoder:
            flops += linear(cells, c.vqgan.codebook_size, c.vqgan.z_channels) + vqgan_decoder(c.vqgan, grid)
    else:
        p = c.decoder_patch_size
        flops += linear(cells, dec.width, p * p * 3) + conv2d(c.image_size, 3, 3, 3)
    return flops


# ---- MaskGIT-VQGAN -------------------------------------------------------------------------------------------------
def _resblock(hw: int, c_in: int, c_out: int) -> int:
    flops = conv2d(hw, c_in, c_out, 3) + conv2d(hw, c_out, c_out, 3)
    return flops + (conv2d(hw, c_out, c_out, 1) if c_in != c_out else 0)


def vqgan_decoder(cfg: VQGANConfig, grid: int) -> int:
    """The conv pixel decoder from a grid x grid code map, counted layer by layer."""
    widths = [cfg.hidden_channels * m for m in cfg.channel_mult]
    hw = grid
    flops = conv2d(hw, cfg.z_channels, widths[-1], 3)
    flops += cfg.num_res_blocks * _resblock(hw, widths[-1], widths[-1])
    ins = [*widths[1:], widths[-1]]
    for i in reversed(range(len(widths))):
        for b in range(cfg.num_res_blocks):
            flops += _resblock(hw, ins[i] if b == 0 else widths[i], widths[i])
        if i > 0:
            hw *= 2
            flops += conv2d(hw, widths[i], widths[i], 3)
    return flops + conv2d(hw, widths[0], 3, 3)


def vqgan_encode(cfg: VQGANConfig, image_size: int) -> int:
    """The teacher's images -> codes (stage-1 targets): conv encoder and codebook distance product."""
    widths = [cfg.hidden_channels * m for m in cfg.channel_mult]
    hw = image_size
    flops = conv2d(hw, 3, widths[0], 3)
    ins = [widths[0], *widths[:-1]]
    for i, w in enumerate(widths):
        for b in range(cfg.num_res_blocks):
            flops += _resblock(hw, ins[i] if b == 0 else w, w)
        if i < len(widths) - 1:
            hw //= 2
    flops += cfg.num_res_blocks * _resblock(hw, widths[-1], widths[-1])
    flops += conv2d(hw, widths[-1], cfg.z_channels, 1)
    return flops + linear(hw * hw, cfg.z_channels, cfg.codebook_size)


# ---- generator -----------------------------------------------------------------------------------------------------
def generator_forward(c: GeneratorConfig) -> int:
    """One forward over [class token, K ids]; logits for the K image positions."""
    n, h = c.num_tokens + 1, c.hidden_size
    layer = transformer_layer(n, h, c.intermediate_size)
    if c.arch == "vit":
        flops = c.num_layers * layer
    else:
        half = c.num_layers // 2
        flops = (2 * half + 1) * layer + half * linear(n, 2 * h, h)  # in + mid + out blocks, skip projections
    return flops + linear(c.num_tokens, h, c.codebook_size)


def generator_forwards(settings: SamplerSettings) -> int:
    """Forward passes per sample over a sampling run: 2 per guided step, 1 where the guidance weight is 0
    (the linear schedule's first step)."""
    return sum(1 if guidance_weight(settings, s) == 0 else 2 for s in range(settings.num_steps))


def generation(c: GeneratorConfig, settings: SamplerSettings | None = None) -> int:
    """Token sampling only (add titok_decode for de-tokenisation)."""
    return generator_forwards(settings or c.sampler) * generator_forward(c)


# ---- perceptual networks (bench.perceptual) ------------------------------------------------------------------------
CONVNEXT_SMALL = ((96, 3), (192, 3), (384, 27), (768, 3))  # (width, blocks) per stage
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # convs up to relu5_3


def convnext_small(resolution: int = 224) -> int:
    """torchvision's ConvNeXt-Small logits of one image at `resolution`: the 4x4/4 stem, per block a 7x7 depthwise
    conv and the two-layer MLP, 2x2/2 downsampling convs between stages, the classifier."""
    hw = resolution // 4
    flops = conv2d(hw, 3, CONVNEXT_SMALL[0][0], 4)
    for i, (width, blocks) in enumerate(CONVNEXT_SMALL):
        if i:
            hw //= 2
            flops += conv2d(hw, CONVNEXT_SMALL[i - 1][0], width, 2)
        flops += blocks * (conv2d(hw, width, width, 7, groups=width) + 2 * linear(hw * hw, width, 4 * width))
    return flops + linear(1, CONVNEXT_SMALL[-1][0], 1000)


def lpips_features(image_size: int) -> int:
    """LPIPS's VGG16 features of one image (the 13 3x3 convs up to relu5_3, a 2x pooling between blocks)."""
    flops, c_in, hw = 0, 3, image_size
    for i, block in enumerate(VGG16_BLOCKS):
        hw = hw // 2 if i else hw
        for c_out in block:
            flops += conv2d(hw, c_in, c_out, 3)
            c_in = c_out
    return flops


def lpips_heads(image_size: int) -> int:
    """LPIPS's 1x1 heads on the five feature-difference maps of one image pair."""
    return sum(conv2d(image_size >> i, block[-1], 1, 1) for i, block in enumerate(VGG16_BLOCKS))


# ---- training steps (per image) ------------------------------------------------------------------------------------
def discriminator_forward(image_size: int, base: int = 128, pool: int = 16) -> int:
    """bench.train.losses.NLayerDiscriminator on one image."""
    widths = [base, base, 2 * base, 4 * base]
    hw = image_size
    flops = conv2d(hw, 3, base, 5)
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        flops += conv2d(hw, c_in, c_out, 3)
        hw //= 2
        flops += conv2d(hw, c_out, c_out, 4, groups=c_out)  # BlurPool
    return flops + conv2d(pool, widths[-1], widths[-1], 1) + conv2d(pool, widths[-1], 1, 5)


def train_stage1(c: TiTokConfig) -> int:
    """Teacher codes (frozen) + encoder and proxy-code decoder trained."""
    return vqgan_encode(c.vqgan, c.image_size) + 3 * (titok_encode(c) + titok_decode(c, pixel_decoder=False))


def reconstruction_losses(image_size: int, perceptual: PerceptualConfig, gan: GANConfig) -> int:
    """The loss networks of stage 2 / single-stage on one image: each perceptual network with a weight sees the
    target (1x) and the reconstruction (forward + input gradient, 2x), LPIPS's heads see their difference (2x);
    with a GAN weight, the discriminator's view in the generator loss (2x) and its own update on a real and a fake
    image (2 x 3x). The discriminator is counted as active (the steady state after gan.start_step)."""
    flops = 0
    if perceptual.convnext_weight > 0:
        flops += 3 * convnext_small(perceptual.resolution)
    if perceptual.lpips_weight > 0:
        flops += 3 * lpips_features(image_size) + 2 * lpips_heads(image_size)
    if gan.weight > 0:
        flops += 8 * discriminator_forward(image_size, gan.disc_base_channels)
    return flops


def train_stage2(c: TiTokConfig, perceptual: PerceptualConfig, gan: GANConfig) -> int:
    """Frozen encoder; decoder + pixel decoder trained; the reconstruction losses."""
    return (
        titok_encode(c) + 3 * titok_decode(c, pixel_decoder=True) + reconstruction_losses(c.image_size, perceptual, gan)
    )


def train_single_stage(c: TiTokConfig, perceptual: PerceptualConfig, gan: GANConfig) -> int:
    """Encoder and decoder trained; the reconstruction losses."""
    return 3 * (titok_encode(c) + titok_decode(c)) + reconstruction_losses(c.image_size, perceptual, gan)


def train_generator(tokenizer: TiTokConfig, generator: GeneratorConfig) -> int:
    """Tokens from the frozen tokenizer + one generator forward/backward."""
    return titok_encode(tokenizer) + 3 * generator_forward(generator)
