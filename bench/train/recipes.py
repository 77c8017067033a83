"""Settings of each training stage; a stage function takes one of these dataclasses and nothing else.

The recipe (optimiser, schedule, loss weights, discriminator) has no defaults here: it lives once, in the
sweep's presets (sweeps/preset/paper.yaml is the paper's and, in its `single` block, the single-stage recipe;
tiny.yaml a CPU delta on it), and bench/plan.py builds these from a preset, so a default could only repeat or
contradict it. What no preset sets keeps a default: stage 1's quantiser weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .optim import OptimConfig
from .trainer import LoopConfig


@dataclass(frozen=True)
class DataConfig:
    name: str = "imagenet"  # "imagenet" (an ImageFolder root), "imagenet_wds" (webdataset shards) or "synthetic"
    root: str | None = None
    train_shards: str | None = None  # imagenet_wds: brace patterns of tar shards (paths or URLs), '::'-joined
    val_shards: str | None = None  # imagenet_wds: local tar shards of the val split
    image_size: int = 256
    num_classes: int | None = None  # synthetic only
    num_images: int | None = None  # synthetic: dataset length; imagenet: class-balanced subset
    num_workers: int = 8
    seed: int = 0


@dataclass(frozen=True)
class TeacherConfig:
    """The MaskGIT-VQGAN proxy-code teacher: released weights from the registry, or a checkpoint path."""

    source: str = "MaskGIT-VQGAN"  # the registered variant (weights: bench.weights) or a .safetensors/.bin path
    overrides: dict = field(default_factory=dict)  # architecture overrides (random stand-ins only)


@dataclass(frozen=True, kw_only=True)
class Stage1Config:
    """Proxy-code training: CE against the teacher's codes + the quantiser loss (docs/reference.md, Stage 1)."""

    model: str = "TiTok-L-32"
    model_overrides: dict = field(default_factory=dict)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    quantizer_weight: float = 1.0
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig
    loop: LoopConfig
    # schedule aids for toy models, as shares of loop.steps (0: off, the paper preset's; see
    # bench.train.tokenizer.stage1_objective): W steps where only the decoder learns, the rest's lr ramping in over
    # the next W; the decoder reading the unquantised latents before step M, a k-means codebook at M
    decoder_warmup_fraction: float  # W / loop.steps
    continuous_fraction: float  # M / loop.steps
    allow_random_weights: bool = False  # stand-in teacher when its weights are missing (tagged)
    device: str = "auto"

    def __post_init__(self):
        for key in ("decoder_warmup_fraction", "continuous_fraction"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"stage1 {key}={getattr(self, key)}: must be a share of loop.steps in [0, 1)")

    @property
    def decoder_warmup_steps(self) -> int:
        return round(self.decoder_warmup_fraction * self.loop.steps)

    @property
    def continuous_steps(self) -> int:
        return round(self.continuous_fraction * self.loop.steps)


@dataclass(frozen=True, kw_only=True)
class GANConfig:
    weight: float
    start_step: int
    lecam_weight: float
    disc_base_channels: int
    disc_groups: int
    optim: OptimConfig  # the discriminator's


@dataclass(frozen=True, kw_only=True)
class PerceptualConfig:
    convnext_weight: float  # MSE between ConvNeXt-S logits
    lpips_weight: float
    resolution: int  # the ConvNeXt input size


@dataclass(frozen=True, kw_only=True)
class Stage2Config:
    """Decoder fine-tuning: frozen encoder + quantiser; L2 + ConvNeXt perceptual + GAN (docs/reference.md, Stage 2)."""

    init_from: str = ""  # the stage-1 checkpoint (our .safetensors)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    perceptual: PerceptualConfig
    gan: GANConfig
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig
    loop: LoopConfig
    allow_random_weights: bool = False
    device: str = "auto"


@dataclass(frozen=True, kw_only=True)
class SingleStageConfig:
    """Single-stage VQ or VAE: L2 + LPIPS + ConvNeXt + GAN (+ quantiser loss or KL), the whole tokenizer trained
    from scratch (the recipe: paper.yaml's `single` block)."""

    model: str = "TiTok-BL-64-VQ"
    model_overrides: dict = field(default_factory=dict)
    quantizer_weight: float  # VQ: codebook + commitment loss
    kl_weight: float  # VAE
    perceptual: PerceptualConfig
    gan: GANConfig
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig
    loop: LoopConfig
    allow_random_weights: bool = False
    device: str = "auto"


@dataclass(frozen=True, kw_only=True)
class GeneratorTrainConfig:
    """MaskGIT training on a frozen tokenizer's tokens (docs/reference.md, Generator)."""

    tokenizer: str = ""  # a tokenizer checkpoint (ours), a released name, a hub-style folder or a file
    # the pretokenize stage's product (its manifest.json or folder) of this tokenizer on `data`: train on those
    # tokens; None: encode every batch on the fly
    tokens: str | None = None
    model: str = "MaskGIT-ViT"
    model_overrides: dict = field(default_factory=dict)
    label_smoothing: float
    unmasked_weight: float  # the loss weight of the unmasked positions (masked: 1)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig
    loop: LoopConfig
    allow_random_weights: bool = False
    device: str = "auto"


@dataclass(frozen=True, kw_only=True)
class PretokenizeConfig:
    """The tokens of every training image's crops under a frozen tokenizer, written once for generator training
    (bench.train.pretokenize; the official code tokenizes the training set once, centre crop and its flip)."""

    tokenizer: str = ""  # as GeneratorTrainConfig.tokenizer
    data: DataConfig = field(default_factory=DataConfig)  # the training split, as the generator reads it
    crops: str = "flip"  # "flip": the centre crop and its horizontal flip; "ten": ten-crop (bench.data.tokens)
    precision: str = "fp32"  # of the encoder ("fp32" | "bf16" | "fp16"); fp32 gives the tokenizer's exact tokens
    batch_size: int = 256  # images per encode, per rank
    shard_size: int = 10_000  # images per shard (the unit of resume and of the split across ranks)
    device: str = "auto"


@dataclass(frozen=True, kw_only=True)
class TeacherTrainConfig:
    """Train a small MaskGIT-VQGAN for offline smoke runs (the released teacher cannot be downloaded there):
    L2 reconstruction + codebook/commitment losses, straight-through. Not a reproduction of MaskGIT."""

    overrides: dict  # MaskGIT-VQGAN architecture overrides (the tiny preset's teacher.overrides)
    commitment_cost: float = 0.25
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig
    loop: LoopConfig
    device: str = "auto"


# ---- from a preset: the plain dicts of a preset's sections -> the settings above (bench/plan.py builds the
# sweep's stages with these, bench/speed the benchmark's recipe: one mapping) ------------------------------------
def optim_from(d: dict) -> OptimConfig:
    return OptimConfig(**{**d, "betas": tuple(d["betas"])})


def loop_from(d: dict, seed: int = 0) -> LoopConfig:
    return LoopConfig(**{**d, "seed": seed})


def gan_from(d: dict) -> GANConfig:
    return GANConfig(**{**d, "optim": optim_from(d["optim"])})
