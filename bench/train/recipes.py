"""Settings of each training stage, with the paper's recipe as the defaults (TITOK.md sections 3 and 4).

The sweep's presets override these (the `tiny` preset shrinks them for the CPU); a stage function takes
one of these dataclasses and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .loop import LoopConfig, OptimConfig


@dataclass(frozen=True)
class DataConfig:
    name: str = "imagenet"  # "imagenet" (an ImageFolder root) or "synthetic"
    root: str | None = None
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


@dataclass(frozen=True)
class Stage1Config:
    """Proxy-code training: CE against the teacher's codes + the quantiser loss (TITOK.md 3.2)."""

    model: str = "TiTok-L-32"
    model_overrides: dict = field(default_factory=dict)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    quantizer_weight: float = 1.0
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-4,
                                                                   warmup_steps=10_000, end_lr=1e-5))
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=1_000_000, batch_size=256, precision="fp16",
                                                                checkpoint_every=10_000))
    allow_random_weights: bool = False  # stand-in teacher when its weights are missing (tagged)
    device: str = "auto"


@dataclass(frozen=True)
class GANConfig:
    weight: float = 0.01
    start_step: int = 20_000
    lecam_weight: float = 0.001
    disc_base_channels: int = 128
    disc_groups: int = 32
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4,
                                                                   warmup_steps=5_000, end_lr=1e-5))


@dataclass(frozen=True)
class PerceptualConfig:
    convnext_weight: float = 0.1  # MSE between ConvNeXt-S logits
    lpips_weight: float = 0.0
    resolution: int = 224  # the ConvNeXt input size


@dataclass(frozen=True)
class Stage2Config:
    """Decoder fine-tuning: frozen encoder + quantiser; L2 + ConvNeXt perceptual + GAN (TITOK.md 3.3)."""

    init_from: str = ""  # the stage-1 checkpoint (our .safetensors)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4,
                                                                   warmup_steps=5_000, end_lr=1e-5))
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=500_000, batch_size=256, precision="fp16",
                                                                checkpoint_every=10_000))
    allow_random_weights: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class SingleStageConfig:
    """Single-stage VQ or VAE: L2 + LPIPS + ConvNeXt + GAN (+ quantiser loss or KL) (TITOK.md 3.4)."""

    model: str = "TiTok-BL-64-VQ"
    model_overrides: dict = field(default_factory=dict)
    quantizer_weight: float = 1.0  # VQ
    kl_weight: float = 1e-6  # VAE
    perceptual: PerceptualConfig = field(default_factory=lambda: PerceptualConfig(convnext_weight=0.1,
                                                                                  lpips_weight=1.0))
    gan: GANConfig = field(default_factory=lambda: GANConfig(weight=0.1, start_step=200_000, optim=OptimConfig(
        lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4, warmup_steps=10_000, end_lr=1e-5)))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4,
                                                                   warmup_steps=10_000, end_lr=1e-5))
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=650_000, batch_size=256, precision="fp16",
                                                                checkpoint_every=10_000))
    allow_random_weights: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class GeneratorTrainConfig:
    """MaskGIT training on a frozen tokenizer's tokens (TITOK.md 4.3)."""

    tokenizer: str = ""  # a tokenizer checkpoint (ours), a released name, a hub-style folder or a file
    model: str = "MaskGIT-ViT"
    model_overrides: dict = field(default_factory=dict)
    label_smoothing: float = 0.1
    unmasked_weight: float = 0.1
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, betas=(0.9, 0.96), weight_decay=0.03,
                                                                   warmup_steps=10_000, end_lr=1e-5))
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=500_000, batch_size=2048, precision="bf16",
                                                                checkpoint_every=10_000))
    allow_random_weights: bool = False
    device: str = "auto"


@dataclass(frozen=True)
class TeacherTrainConfig:
    """Train a small MaskGIT-VQGAN for offline smoke runs (the released teacher cannot be downloaded there):
    L2 reconstruction + codebook/commitment losses, straight-through. Not a reproduction of MaskGIT."""

    overrides: dict = field(default_factory=lambda: {"hidden_channels": 32, "channel_mult": (1, 1, 2, 2, 4),
                                                     "codebook_size": 1024})
    commitment_cost: float = 0.25
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0,
                                                                   warmup_steps=20, end_lr=1e-4))
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=200, batch_size=32, ema_max_decay=0.0))
    device: str = "auto"
