"""The registry of paper-named variants. A name is the single source of a model's sizes.

Tokenizers
  TiTok-{S,B,L}-{K}            two-stage (proxy codes + MaskGIT-VQGAN pixel decoder), VQ 4096 x 12,
                               l2-normalised codes, 256 px; any K (the paper's grid uses 16..256)
  TiTok-{X}{Y}-{K}-{VQ,VAE}    single-stage, encoder size X, decoder size Y (Y omitted: same as X);
                               VQ 8192 x 64 (plain codes) or VAE with 16 channels
  TA-TiTok-{X}{Y}-{K}-{VQ,VAE} the same with the text-aware decoder (77 CLIP text tokens)
  any of these + "@512"        512 px
Generators
  MaskGIT-ViT, MaskGIT-UViT    architectures (override num_tokens / codebook_size for a grid cell)
  MaskGIT-ViT:TiTok-L-32, MaskGIT-ViT:TiTok-B-64, MaskGIT-UViT:TiTok-S-128   the released generators
Teacher
  MaskGIT-VQGAN
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .generators import GeneratorConfig, MaskGITGenerator
from .maskgit_vqgan import MaskGITVQGAN, VQGANConfig
from .sampling import SamplerSettings
from .titok import TiTok, TiTokConfig

GRID_SIZES = ("S", "B", "L")
GRID_TOKENS = (16, 32, 64, 96, 128, 192, 256)

ModelConfig = TiTokConfig | GeneratorConfig | VQGANConfig

# The hub commit each repo's files are fetched at: hub repo id -> commit sha; "" or absent: not pinned yet (the
# shipped file has no commits: it was written offline). `python -m bench.weights pin` fills it in from the cache.
PINS_FILE = Path(__file__).with_name("hub_revisions.json")


def hub_pins() -> dict[str, str]:
    """The pinned revisions in PINS_FILE (read at every call: a `pin` or a test may change it); unpinned repos and
    the file's "_about" note are left out."""
    if not PINS_FILE.is_file():
        return {}
    return {repo: rev for repo, rev in json.loads(PINS_FILE.read_text()).items() if rev and not repo.startswith("_")}


def pinned_revision(repo: str) -> str | None:
    return hub_pins().get(repo)


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # "tokenizer", "generator" or "teacher"
    config: ModelConfig
    hub_repo: str | None = None  # Hugging Face repo of the released weights
    official_file: str | None = None  # raw state_dict file in the hub repo fun-research/TiTok
    official_key: str | None = None  # entry in tests/data/reference/official_checkpoints.json
    generator: str | None = None  # the released generator paired with this tokenizer
    note: str = ""

    @property
    def revision(self) -> str | None:
        """The hub commit its released weights are pinned to (PINS_FILE); None: not pinned yet, or no hub repo."""
        return pinned_revision(self.hub_repo) if self.hub_repo else None

    @property
    def released(self) -> bool:
        return self.hub_repo is not None or self.official_file is not None

    def sizes(self) -> dict:
        """The sizes this name stands for, for tables and `python -m models`."""
        c = self.config
        if isinstance(c, TiTokConfig):
            return {
                "encoder": c.encoder_size,
                "decoder": c.decoder_size,
                "tokens": c.num_latent_tokens,
                "resolution": c.image_size,
                "quantizer": c.quantizer,
                "codes": (f"{c.codebook_size}x{c.token_size}" if c.quantizer == "vq" else f"{c.token_size}ch"),
                "stages": 2 if c.two_stage else 1,
                "text": bool(c.text_tokens),
            }
        if isinstance(c, GeneratorConfig):
            return {
                "arch": c.arch,
                "hidden": c.hidden_size,
                "layers": c.num_layers,
                "heads": c.num_heads,
                "tokens": c.num_tokens,
                "codebook": c.codebook_size,
            }
        return {"hidden": c.hidden_channels, "codebook": f"{c.codebook_size}x{c.z_channels}"}


_NAME = re.compile(
    r"^(?P<ta>TA-)?TiTok-(?P<enc>[SBL])(?P<dec>[SBL])?-(?P<k>\d+)"
    r"(?:-(?P<q>VQ|VAE))?(?:@(?P<res>\d+))?$"
)


def parse_tokenizer_name(name: str) -> TiTokConfig | None:
    """Config for any name of the tokenizer grammar (see module docstring), or None."""
    m = _NAME.match(name)
    if not m:
        return None
    enc, k = m["enc"], int(m["k"])
    dec = m["dec"] or enc
    res = int(m["res"] or 256)
    if m["ta"] and not m["q"]:
        return None  # TA-TiTok exists only in single-stage form
    if m["q"] is None:
        if m["dec"]:
            return None  # two-stage names have one size letter
        return TiTokConfig(encoder_size=enc, decoder_size=dec, num_latent_tokens=k, image_size=res)
    common = dict(
        encoder_size=enc,
        decoder_size=dec,
        num_latent_tokens=k,
        image_size=res,
        two_stage=False,
        pixel_decoder=False,
        legacy_reshape=False,
        text_tokens=77 if m["ta"] else 0,
    )
    if m["q"] == "VQ":
        return TiTokConfig(quantizer="vq", token_size=64, codebook_size=8192, use_l2_norm=False, **common)
    return TiTokConfig(quantizer="vae", token_size=16, codebook_size=0, use_l2_norm=False, **common)


# Released sampler settings (configs/infer of the reference; softmax-temperature annealing is on in its
# ImageNet evaluation script).
SAMPLER_L32 = SamplerSettings(num_steps=8, guidance_scale=4.5, guidance_decay="linear", randomize_temperature=9.5)
SAMPLER_B64 = SamplerSettings(num_steps=8, guidance_scale=3.0, guidance_decay="linear", randomize_temperature=11.0)
SAMPLER_S128 = SamplerSettings(
    num_steps=64, guidance_scale=6.9, guidance_decay="power-cosine", randomize_temperature=2.8
)

MASKGIT_VIT = GeneratorConfig(
    arch="vit", hidden_size=768, num_layers=24, num_heads=16, intermediate_size=3072, num_tokens=32, sampler=SAMPLER_L32
)
MASKGIT_UVIT = GeneratorConfig(
    arch="uvit",
    hidden_size=1024,
    num_layers=20,
    num_heads=16,
    intermediate_size=4096,
    num_tokens=128,
    sampler=SAMPLER_S128,
)


def _registry() -> dict[str, Variant]:
    reg: dict[str, Variant] = {}

    def add(v: Variant):
        reg[v.name] = v

    released_two_stage = {
        "TiTok-L-32": ("l32", "MaskGIT-ViT:TiTok-L-32"),
        "TiTok-B-64": ("b64", "MaskGIT-ViT:TiTok-B-64"),
        "TiTok-S-128": ("s128", "MaskGIT-UViT:TiTok-S-128"),
    }
    for size in GRID_SIZES:
        for k in GRID_TOKENS:
            name = f"TiTok-{size}-{k}"
            tag, gen = released_two_stage.get(name, (None, None))
            add(
                Variant(
                    name,
                    "tokenizer",
                    parse_tokenizer_name(name),
                    hub_repo=f"yucornetto/tokenizer_titok_{tag}_imagenet" if tag else None,
                    official_file=f"tokenizer_titok_{tag}.bin" if tag else None,
                    official_key=f"tokenizer:titok_{tag}" if tag else None,
                    generator=gen,
                    note="" if tag else "grid cell of the paper's scaling study (no released weights)",
                )
            )
    for name in ("TiTok-L-64@512", "TiTok-B-128@512"):
        add(
            Variant(
                name,
                "tokenizer",
                parse_tokenizer_name(name),
                note="in the paper, not released; 512 px patch size 16 inferred (UNVERIFIED)",
            )
        )
    single = {
        "TiTok-BL-64-VQ": "bl64_vq8k",
        "TiTok-BL-128-VQ": "bl128_vq8k",
        "TiTok-SL-256-VQ": "sl256_vq8k",
        "TiTok-LL-32-VAE": "ll32_vae_c16",
        "TiTok-BL-64-VAE": "bl64_vae_c16",
        "TiTok-BL-128-VAE": "bl128_vae_c16",
    }
    for name, tag in single.items():
        add(
            Variant(
                name,
                "tokenizer",
                parse_tokenizer_name(name),
                hub_repo=f"yucornetto/tokenizer_titok_{tag}_imagenet",
                official_key=f"tokenizer:titok_{tag}",
                note="single-stage; no generator released",
            )
        )
    for name in (
        "TA-TiTok-BL-32-VQ",
        "TA-TiTok-BL-64-VQ",
        "TA-TiTok-BL-128-VQ",
        "TA-TiTok-BL-32-VAE",
        "TA-TiTok-BL-64-VAE",
        "TA-TiTok-SL-128-VAE",
    ):
        tag = name[len("TA-TiTok-") :].lower().replace("-", "")  # bl32vq
        tag = f"{tag[:-2]}_vq" if tag.endswith("vq") else f"{tag[:-3]}_vae"
        add(
            Variant(
                name,
                "tokenizer",
                parse_tokenizer_name(name),
                hub_repo=f"turkeyju/tokenizer_tatitok_{tag}",
                official_key=f"tokenizer:tatitok_{tag}",
                note="text-aware decoder: pass CLIP ViT-L-14 text tokens [B, 77, 768] to decode()",
            )
        )
    add(
        Variant(
            "MaskGIT-VQGAN",
            "teacher",
            VQGANConfig(),
            official_file="maskgit-vqgan-imagenet-f16-256.bin",
            official_key="teacher:maskgit_vqgan_f16_256",
            note="proxy-code teacher, 1024 x 256 codes, f16",
        )
    )
    add(Variant("MaskGIT-ViT", "generator", MASKGIT_VIT, note="BERT layout, 177M; set num_tokens/codebook_size"))
    add(Variant("MaskGIT-UViT", "generator", MASKGIT_UVIT, note="U-ViT with long skips; set num_tokens"))
    for tok, (tag, gen), sampler in zip(
        released_two_stage, released_two_stage.values(), (SAMPLER_L32, SAMPLER_B64, SAMPLER_S128)
    ):
        base = MASKGIT_UVIT if gen.startswith("MaskGIT-UViT") else MASKGIT_VIT
        add(
            Variant(
                gen,
                "generator",
                dataclasses.replace(base, num_tokens=reg[tok].config.num_latent_tokens, sampler=sampler),
                hub_repo=f"yucornetto/generator_titok_{tag}_imagenet",
                official_file=f"generator_titok_{tag}.bin",
                official_key=f"generator:titok_{tag}",
                note=f"released generator for {tok}",
            )
        )
    return reg


VARIANTS: dict[str, Variant] = _registry()


def resolve(name: str) -> Variant:
    """The registered variant, or one decoded from the tokenizer grammar; a clear error otherwise."""
    if name in VARIANTS:
        return VARIANTS[name]
    config = parse_tokenizer_name(name)
    if config is not None:
        return Variant(name, "tokenizer", config)
    close = difflib.get_close_matches(name, VARIANTS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown model name {name!r}.{hint} Names follow TiTok-{{S,B,L}}-{{K}}, "
        "TiTok-{XY}-{K}-{VQ,VAE}, TA-TiTok-..., optional @512; see models.VARIANTS."
    )


def with_overrides(config: ModelConfig, overrides: dict) -> ModelConfig:
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown {type(config).__name__} fields {unknown}; known: {sorted(fields)}")
    return dataclasses.replace(config, **overrides) if overrides else config


def build_from_config(config: ModelConfig) -> nn.Module:
    if isinstance(config, TiTokConfig):
        return TiTok(config)
    if isinstance(config, GeneratorConfig):
        return MaskGITGenerator(config)
    if isinstance(config, VQGANConfig):
        return MaskGITVQGAN(config)
    raise TypeError(f"not a model config: {type(config).__name__}")


def build(name: str, **overrides) -> nn.Module:
    """A randomly initialised model by variant name; keyword overrides replace config fields."""
    return build_from_config(with_overrides(resolve(name).config, overrides))
