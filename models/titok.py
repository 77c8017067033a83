"""The TiTok tokenizer: two-stage (proxy-code head, optional MaskGIT-VQGAN pixel decoder) and single-stage
(pixel head) forms, VQ or VAE, text-aware (TA-TiTok) or not.

Public use: `encode(images) -> tokens` and `decode(tokens) -> images` in [0, 1]. VQ tokens are integer
ids [B, K]; VAE tokens are latents [B, K, C] (the posterior mean unless `sample=True`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .maskgit_vqgan import Decoder as PixelDecoder
from .maskgit_vqgan import PlainQuantizer, VQGANConfig
from .quantizers import DiagonalGaussianQuantizer, QuantizerOutput, VectorQuantizer, full_precision
from .sizes import ViTSize, vit_size
from .vit import TiTokDecoder, TiTokEncoder, init_weights


@dataclass(frozen=True)
class TiTokConfig:
    """Everything that determines a TiTok tokenizer's architecture (the registry fills it from a name)."""

    encoder_size: str = "L"
    decoder_size: str = "L"
    num_latent_tokens: int = 32
    image_size: int = 256
    patch_size: int = 16  # encoder patch
    decoder_patch_size: int = 16
    quantizer: str = "vq"  # "vq" or "vae"
    token_size: int = 12  # code dimension (VAE: latent channels; the encoder emits twice as many)
    codebook_size: int = 4096
    use_l2_norm: bool = True
    commitment_cost: float = 0.25
    # Two-stage family: decoder predicts MaskGIT-VQGAN proxy codes; with `pixel_decoder` (stage 2, the
    # released form) a softmax-weighted codebook lookup feeds the MaskGIT-VQGAN decoder.
    two_stage: bool = True
    pixel_decoder: bool = True
    legacy_reshape: bool = True  # the released two-stage checkpoints' latent scramble (see vit.py)
    vqgan: VQGANConfig = field(default_factory=VQGANConfig)
    text_tokens: int = 0  # TA-TiTok: 77 CLIP text tokens appended in the decoder
    text_dim: int = 768
    # None: the reference init; a float: weights ~ trunc-normal(init_gain / sqrt(fan_in)) (vit.init_weights) and
    # zero-mean patch filters, for toy widths where the reference init stalls stage 1. Only a fresh model's init:
    # loading ignores it.
    init_gain: float | None = None

    def __post_init__(self):
        problems = []
        if self.quantizer not in ("vq", "vae"):
            problems.append(f"quantizer={self.quantizer!r} (expected 'vq' or 'vae')")
        for name, patch in (("patch_size", self.patch_size), ("decoder_patch_size", self.decoder_patch_size)):
            if patch <= 0 or self.image_size % patch:
                problems.append(f"{name}={patch} does not divide image_size={self.image_size}")
        if self.init_gain is not None and not self.init_gain > 0:
            problems.append(f"init_gain={self.init_gain} (must be positive, or None for the reference init)")
        if self.num_latent_tokens < 1:
            problems.append(f"num_latent_tokens={self.num_latent_tokens} (must be >= 1)")
        if self.two_stage and self.image_size // self.decoder_patch_size != (
            self.image_size // self.vqgan.downsample_factor
        ):
            problems.append(
                f"two-stage decoder grid {self.image_size // self.decoder_patch_size} must equal the "
                f"MaskGIT-VQGAN code grid {self.image_size // self.vqgan.downsample_factor}"
            )
        for size in (self.encoder_size, self.decoder_size):
            vit_size(size)  # raises a clear error for an unknown size name
        if problems:
            raise ValueError("invalid TiTok config: " + "; ".join(problems))

    @property
    def encoder(self) -> ViTSize:
        return vit_size(self.encoder_size)

    @property
    def decoder(self) -> ViTSize:
        return vit_size(self.decoder_size)

    @property
    def token_grid(self) -> int:
        return self.image_size // self.decoder_patch_size


class TiTok(nn.Module):
    kind = "tokenizer"

    def __init__(self, config: TiTokConfig):
        super().__init__()
        self.config = c = config
        enc, dec = c.encoder, c.decoder
        self.latent_tokens = nn.Parameter(enc.width**-0.5 * torch.randn(c.num_latent_tokens, enc.width))
        self.encoder = TiTokEncoder(
            image_size=c.image_size,
            patch_size=c.patch_size,
            width=enc.width,
            depth=enc.depth,
            heads=enc.heads,
            num_latent_tokens=c.num_latent_tokens,
            out_channels=c.token_size * (2 if c.quantizer == "vae" else 1),
            legacy_reshape=c.legacy_reshape,
        )
        self.decoder = TiTokDecoder(
            image_size=c.image_size,
            patch_size=c.decoder_patch_size,
            width=dec.width,
            depth=dec.depth,
            heads=dec.heads,
            num_latent_tokens=c.num_latent_tokens,
            token_size=c.token_size,
            head="proxy" if c.two_stage else "pixel",
            proxy_codebook_size=c.vqgan.codebook_size,
            text_tokens=c.text_tokens,
            text_dim=c.text_dim,
        )
        init_weights(self.encoder, c.init_gain)
        init_weights(self.decoder, c.init_gain)
        if c.init_gain is not None:
            # the pixels are in [0, 1]: a filter's mean responds to a patch's brightness, much the same in every
            # image, and drowns what differs; zero-mean filters see only the patch's pattern and colour
            with torch.no_grad():
                w = self.encoder.patch_embed.weight
                w -= w.mean(dim=(1, 2, 3), keepdim=True)
        if c.quantizer == "vq":
            self.quantize = VectorQuantizer(c.codebook_size, c.token_size, c.commitment_cost, c.use_l2_norm)
        else:
            self.quantize = DiagonalGaussianQuantizer()
        if c.two_stage and c.pixel_decoder:
            self.pixel_quantize = PlainQuantizer(c.vqgan.codebook_size, c.vqgan.z_channels)
            self.pixel_decoder = PixelDecoder(c.vqgan)

    # -- the reference's building blocks (used by training and the parity tests) ---------------------
    def forward_encoder(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latents [B, C, 1, K] (VAE: C = 2 * token_size, mean then logvar)."""
        return self.encoder(images, self.latent_tokens)

    def quantize_latents(self, z: torch.Tensor, sample: bool = True) -> QuantizerOutput:
        if self.config.quantizer == "vae":
            return self.quantize(z, sample=sample)
        return self.quantize(z)

    def forward_decoder(self, z_quantized: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """Unclamped output: images, or proxy-code logits [B, 1024, g, g] in stage-1 form."""
        out = self.decoder(z_quantized, text)
        if hasattr(self, "pixel_decoder"):
            out = self.pixel_decoder(self.pixel_quantize.soft_lookup(out.softmax(dim=1)))
        return out

    def forward(self, images: torch.Tensor, text: torch.Tensor | None = None):
        """Training forward: (decoder output, quantiser output)."""
        q = self.quantize_latents(self.forward_encoder(images))
        return self.forward_decoder(q.z_quantized, text), q

    # -- public API ---------------------------------------------------------------------------------
    @property
    def is_vq(self) -> bool:
        return self.config.quantizer == "vq"

    @property
    def outputs_pixels(self) -> bool:
        return not self.config.two_stage or self.config.pixel_decoder

    def tokens_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """VQ ids [B, K] or VAE latents [B, K, C] -> decoder input [B, C, 1, K]."""
        if self.is_vq:
            if tokens.is_floating_point():
                raise TypeError("a VQ tokenizer decodes integer token ids [B, K]")
            return self.quantize.lookup(tokens)
        return tokens.transpose(1, 2).unsqueeze(2)

    @torch.no_grad()
    @full_precision
    def encode(self, images: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> VQ ids [B, K] or VAE latents [B, K, C], in fp32 whatever the caller's
        autocast (the generator's tokens, on the fly or pretokenized, and evaluation's)."""
        q = self.quantize_latents(self.forward_encoder(images), sample=sample)
        if self.is_vq:
            return q.indices
        return q.z_quantized.squeeze(2).transpose(1, 2)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """tokens -> images [B, 3, H, W] clamped to [0, 1]."""
        if not self.outputs_pixels:
            raise ValueError(
                "this two-stage TiTok is in stage-1 form (proxy-code head, no pixel decoder): use "
                "decode_proxy_codes(tokens) and decode the codes with the MaskGIT-VQGAN teacher"
            )
        return self.forward_decoder(self.tokens_to_latents(tokens), text).clamp(0.0, 1.0)

    @torch.no_grad()
    def decode_proxy_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Two-stage family: tokens -> argmax MaskGIT-VQGAN codes [B, g*g] (stage-1 reconstruction)."""
        if not self.config.two_stage:
            raise ValueError("a single-stage TiTok has no proxy-code head")
        logits = self.decoder(self.tokens_to_latents(tokens))
        return logits.argmax(dim=1).flatten(1)
