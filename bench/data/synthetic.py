"""Procedurally generated, class-conditional images: offline data for CPU toy runs and tests.

A class is a triple (shape, palette, texture), each one of ten kinds. Class c maps to its triple through
shifted decimal digits (`class_attributes`), so the first ten classes differ in all three attributes and
up to 1000 classes are all distinct. Each image draws its own position, size, rotation, aspect, colour
jitter, texture frequency and phase, background (a gradient between two low-saturation colours) and mild
noise from a generator seeded by (seed, split, index): the same key gives the same bytes in every
process with the same numpy build (transcendental functions may differ in the last bit across builds),
and 'train' and 'val' are disjoint streams. Rendering is
vectorised numpy over the pixel grid, with anti-aliased edges (signed distance -> pixel coverage).
"""

from __future__ import annotations

import colorsys
import functools
import math

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.data.base import DatasetError

MAX_CLASSES = 1000
MIN_SIZE, MAX_SIZE = 32, 512
SPLITS = {"train": 0, "val": 1}  # the split's code enters the per-image seed
DEFAULT_NUM_IMAGES = {"train": 50_000, "val": 10_000}
NOISE_STD = 0.02

SHAPES = ("disc", "square", "triangle", "ring", "plus", "diamond", "star", "bar", "hexagon", "crescent")
TEXTURES = ("solid", "stripes", "checker", "dots", "radial", "linear", "rings", "waves", "blocks", "outline")


def class_attributes(label: int) -> tuple[int, int, int]:
    """Class -> (shape, palette, texture) indices; a bijection on 0..999 (digits d0, d1, d2 of the label:
    shape d0, palette d0+d1, texture d0+d1+d2, all mod 10)."""
    d0, d1, d2 = label % 10, (label // 10) % 10, (label // 100) % 10
    return d0, (d0 + d1) % 10, (d0 + d1 + d2) % 10


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], x to the right and y downwards; read-only because it is shared."""
    u = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2 - 1
    x, y = np.meshgrid(u, u)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _shape_sdf(shape: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Approximate signed distance (negative inside) in the shape's local frame; each shape has radius ~0.9."""
    ax, ay = np.abs(x), np.abs(y)
    if shape == 0:  # disc
        return np.sqrt(x * x + y * y) - 0.9
    if shape == 1:  # square
        return np.maximum(ax, ay) - 0.75
    if shape == 2:  # equilateral triangle, inradius 0.45
        return np.maximum(-y, 0.866 * ax + 0.5 * y) - 0.45
    if shape == 3:  # ring
        return np.abs(np.sqrt(x * x + y * y) - 0.68) - 0.22
    if shape == 4:  # plus
        return np.minimum(np.maximum(ax - 0.3, ay - 0.9), np.maximum(ax - 0.9, ay - 0.3))
    if shape == 5:  # diamond
        return (ax + ay) * 0.7071 - 0.62
    if shape == 6:  # five-pointed star: radius modulated by cos(5 phi) = Re(z^5) / |z|^5, no atan2 needed
        x2, y2 = x * x, y * y  # products, not **: numpy's float power is slow
        r2 = x2 + y2 + 1e-6
        rho = np.sqrt(r2)
        cos5 = x * (x2 * x2 - 10 * x2 * y2 + 5 * y2 * y2) / (r2 * r2 * rho)
        return rho - (0.6 + 0.3 * cos5)
    if shape == 7:  # bar with round ends
        return np.sqrt(np.maximum(ax - 0.55, 0) ** 2 + y * y) - 0.38
    if shape == 8:  # hexagon
        return np.maximum(0.866 * ax + 0.5 * ay, ay) - 0.78
    # crescent: a disc minus a shifted disc
    return np.maximum(np.sqrt(x * x + y * y) - 0.88, 0.72 - np.sqrt((x - 0.45) ** 2 + y * y))


def _texture(
    texture: int, x: np.ndarray, y: np.ndarray, d: np.ndarray, px: float, rng: np.random.Generator
) -> np.ndarray | float:
    """Mix weight in [0, 1] between the primary (0) and secondary (1) colour, in the shape's local frame."""
    k = rng.uniform(2.5, 4.5) * math.pi
    phase = rng.uniform(0, 2 * math.pi)
    if texture == 0:  # solid
        return 0.0
    if texture == 1:  # stripes
        return np.clip(0.5 + 1.5 * np.sin(k * x + phase), 0, 1)
    if texture == 2:  # checker
        return np.clip(0.5 + 3 * np.sin(k * x + phase) * np.sin(k * y + phase), 0, 1)
    if texture == 3:  # dots on a lattice
        fx, fy = x * (k / math.pi) + phase, y * (k / math.pi) + phase
        fx, fy = fx - np.floor(fx) - 0.5, fy - np.floor(fy) - 0.5  # floor, not %: float % is much slower
        return np.clip(0.5 + 6 * (0.3 - np.sqrt(fx * fx + fy * fy)), 0, 1)
    if texture == 4:  # radial gradient
        return np.clip(np.sqrt(x * x + y * y), 0, 1)
    if texture == 5:  # linear gradient
        return np.clip(0.5 + 0.55 * x, 0, 1)
    if texture == 6:  # concentric rings
        return 0.5 + 0.5 * np.sin(1.5 * k * np.sqrt(x * x + y * y) + phase)
    if texture == 7:  # waves
        return 0.5 + 0.5 * np.sin(k * x + 1.5 * np.sin(k * y) + phase)
    if texture == 8:  # coarse random blocks (4 x 4 over the shape's box)
        cells = rng.random((4, 4), dtype=np.float32)
        ix = np.clip(((x + 1) * 2).astype(np.intp), 0, 3)
        iy = np.clip(((y + 1) * 2).astype(np.intp), 0, 3)
        return cells[iy, ix]
    # outline: the primary colour is a border band, the secondary colour fills the inset shape
    return np.clip(0.5 - (d + 0.25) * px, 0, 1)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32).reshape(3, 1, 1)


def render(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image of class `label`: float32 [3, size, size] in [0, 1]; all randomness comes from `rng`."""
    shape, palette, texture = class_attributes(label)
    gx, gy = _grid(size)

    # background: a linear gradient between two low-saturation colours
    bg0 = _hsv(rng.random(), rng.uniform(0, 0.25), rng.uniform(0.15, 0.95))
    bg1 = _hsv(rng.random(), rng.uniform(0, 0.25), rng.uniform(0.15, 0.95))
    a = rng.uniform(0, 2 * math.pi)
    ramp = np.clip(0.5 + 0.5 * (gx * math.cos(a) + gy * math.sin(a)), 0, 1)
    img = bg0 + (bg1 - bg0) * ramp

    # the object's local frame: translate, rotate, scale (with a mild aspect change)
    cx, cy = (float(v) for v in rng.uniform(-0.25, 0.25, size=2))
    radius = rng.uniform(0.4, 0.62)
    aspect = math.exp(rng.uniform(-0.2, 0.2))
    theta = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(theta), math.sin(theta)
    dx, dy = gx - cx, gy - cy
    x = (c * dx + s * dy) * (aspect / radius)
    y = (c * dy - s * dx) / (aspect * radius)

    px = radius * size / 2  # pixels per local unit, for anti-aliased edges one pixel wide
    d = _shape_sdf(shape, x, y)
    alpha = np.clip(0.5 - d * px, 0, 1)

    hue = palette / 10 + rng.uniform(-0.025, 0.025)
    sat, val = rng.uniform(0.65, 0.95), rng.uniform(0.7, 1.0)
    primary = _hsv(hue, sat, val)
    secondary = _hsv(hue, sat * 0.5, val * rng.uniform(0.25, 0.45))
    fg = primary + (secondary - primary) * _texture(texture, x, y, d, px, rng)

    img += (fg - img) * alpha
    # uniform noise with std NOISE_STD: numpy draws uniforms faster than normals
    img += (rng.random(img.shape, dtype=np.float32) - 0.5) * (NOISE_STD * math.sqrt(12))
    return np.clip(img, 0, 1, out=img)


class SyntheticShapes(Dataset):
    """`num_images` images of `num_classes` classes; image i has class i % num_classes (balanced)."""

    takes_sample_seeds = False  # nothing random at read time: the index fixes the image

    def __init__(
        self,
        *,
        split: str = "train",
        image_size: int = 64,
        num_images: int | None = None,
        num_classes: int = 10,
        seed: int = 0,
    ):
        if split not in SPLITS:
            raise DatasetError(f"synthetic data has the splits {sorted(SPLITS)}, not {split!r}")
        if not MIN_SIZE <= image_size <= MAX_SIZE:
            raise DatasetError(f"synthetic image_size must be in [{MIN_SIZE}, {MAX_SIZE}], got {image_size}")
        if not 1 <= num_classes <= MAX_CLASSES:
            raise DatasetError(f"synthetic num_classes must be in [1, {MAX_CLASSES}], got {num_classes}")
        num_images = DEFAULT_NUM_IMAGES[split] if num_images is None else num_images
        if num_images < 1:
            raise DatasetError(f"synthetic num_images must be positive, got {num_images}")
        if seed < 0:
            raise DatasetError(f"synthetic seed must be non-negative, got {seed}")
        self.split, self.image_size, self.num_images = split, image_size, num_images
        self.num_classes, self.seed = num_classes, seed

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = int(index)
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} synthetic images")
        label = index % self.num_classes
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        return torch.from_numpy(render(label, self.image_size, rng)), label

    def describe(self) -> dict:
        return {
            "name": "synthetic",
            "root": None,
            "split": self.split,
            "len": self.num_images,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "seed": self.seed,
            "preprocessing": f"rendered at {self.image_size}x{self.image_size}, [0,1] float, no augmentation",
        }
