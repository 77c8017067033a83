"""ImageNet-style folder dataset: `<root>/<split>/<class>/<image>`, with the paper's preprocessing.

- Label space: the sorted class folders of `<root>/train/` when it exists (so 'val' labels agree with
  'train' even when 'val' holds a subset of the classes), else of the split folder itself.
- Preprocessing (TiTok): resize the shorter side to `image_size` (bicubic, antialias), then RandomCrop +
  horizontal flip for training or CenterCrop for evaluation; float32 [3, H, W] in [0, 1], no
  normalisation. With a seeded key `(index, sample_seed)` the crop and flip come from `sample_seed`, so the
  training loader can reproduce them exactly on resume.
- Reading: every mode is converted to 8-bit RGB. Transparency (RGBA, LA, PA, palette or colour-key
  transparency) is composited onto white, because transparent pixels often hold arbitrary colours
  (dropping alpha exposes them) and most transparent images are drawn for a white page. 16-bit
  greyscale ('I;16', 'I') is scaled by 255/65535 (Pillow's own 'RGB' conversion would clip it).
- Unreadable files (truncated, corrupt, not an image) are reported: each process appends one JSON line per
  skipped file to its own file in the `skipped_log` folder (safe with DataLoader workers and DDP ranks), and
  `skipped()` merges them. Indexing (training) replaces one by the next readable index, so a batch keeps its
  size; `read(index)` (evaluation: bench.eval.run.eval_batches) gives None instead, so an evaluation counts
  each image once and under its own label.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from bench.data.base import DatasetError, first_readable, log_skipped, read_skipped

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB; transparency composited onto white (see the module docstring)."""
    if im.mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(im, dtype=np.float32) * (255 / 65535)
        im = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":  # float images (TIFF) are taken to be in [0, 1]
        im = Image.fromarray(np.clip(np.asarray(im) * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        im.load()  # decode everything now, so truncation surfaces here and not in a later transform
        return to_rgb(im)


def preprocess(image: Image.Image, size: int, train: bool, sample_seed: int | None = None) -> torch.Tensor:
    """TiTok's preprocessing (see the module docstring): resize the shorter side to `size`, then a random crop +
    flip (`train`; fixed by `sample_seed` when given) or a centre crop; float32 [3, size, size] in [0, 1]."""
    image = TF.resize(image, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    if train:
        generator = None if sample_seed is None else torch.Generator().manual_seed(sample_seed)
        top = int(torch.randint(image.height - size + 1, (), generator=generator))
        left = int(torch.randint(image.width - size + 1, (), generator=generator))
        image = TF.crop(image, top, left, size, size)
        if torch.rand((), generator=generator) < 0.5:
            image = TF.hflip(image)
    else:
        image = TF.center_crop(image, [size, size])
    return TF.to_tensor(image)


def preprocessing(size: int, train: bool) -> str:
    """What `preprocess` does at `size`, in the words a dataset's describe() records."""
    crop = f"random crop {size} + horizontal flip" if train else f"center crop {size}"
    return f"resize shorter side to {size} (bicubic, antialias), {crop}, [0,1] float"


def _scan_images(folder: str) -> list[str]:
    """Image files under `folder` (recursive, sorted, hidden files such as macOS '._x.JPEG' left out)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return found


def _has_images(folder: str) -> bool:
    """Whether `folder` holds an image file (stops at the first: cheap on a million-file split)."""
    for _, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS) for f in filenames):
            return True
    return False


def _class_folders(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


class ImageFolderDataset(Dataset):
    """Images of `<root>/<split>/<class>/...` as (float32 [3, S, S] in [0, 1], class index)."""

    takes_sample_seeds = True  # random crop and flip can be fixed per sample by the loader

    def __init__(
        self,
        root: str,
        *,
        split: str,
        image_size: int,
        train: bool,
        max_images: int | None = None,
        num_classes: int | None = None,
        seed: int = 0,
        skipped_log: str | None = None,
    ):
        if image_size < 1:
            raise DatasetError(f"image_size must be positive, got {image_size}")
        self.root, self.split, self.image_size, self.train = os.path.abspath(root), split, image_size, train
        self.max_images, self.seed, self.skipped_log = max_images, seed, skipped_log
        self.split_dir = os.path.join(self.root, split)
        layout = f"expected <root>/{split}/<class folder>/<image files>, e.g. {root}/{split}/n01440764/x.JPEG"
        if not os.path.isdir(self.root):
            raise DatasetError(f"image folder root {self.root} does not exist or is not a folder; {layout}")
        if not os.path.isdir(self.split_dir):
            present = _class_folders(self.root)
            raise DatasetError(
                f"split folder {self.split_dir} does not exist (folders in the root: {present[:10]}); {layout}"
            )

        split_classes = _class_folders(self.split_dir)
        if not split_classes:
            loose = _scan_images(self.split_dir)
            what = (
                f"{len(loose)} image files lie directly in it; move them into class folders (for ImageNet "
                f"val: one folder per synset, as in the train split)"
                if loose
                else "it is empty"
            )
            raise DatasetError(f"split folder {self.split_dir} has no class folders: {what}; {layout}")
        train_dir = os.path.join(self.root, "train")
        label_dir = train_dir if os.path.isdir(train_dir) else self.split_dir  # its sorted class folders: the labels
        self.classes = _class_folders(label_dir)
        unknown = sorted(set(split_classes) - set(self.classes))
        if unknown:
            raise DatasetError(
                f"class folders {unknown[:5]} of {self.split_dir} are not in {train_dir}, which "
                f"defines the labels; the splits must use the same class folder names"
            )
        if num_classes is not None:
            if not 1 <= num_classes <= len(self.classes):
                raise DatasetError(
                    f"num_classes={num_classes}, but {label_dir} has {len(self.classes)} class "
                    f"folders: set data.num_classes={len(self.classes)} (or fewer: the first in "
                    "sorted order), or point the root at the full dataset"
                )
            self.classes = self.classes[:num_classes]  # a subset: the first classes in sorted order
        self.num_classes = len(self.classes)
        empty = [name for name in self.classes if not _has_images(os.path.join(label_dir, name))]
        if empty:  # it would still take a label, shifting every later class's
            raise DatasetError(
                f"class folders {empty[:5]} of {label_dir} hold no image files, yet each class "
                f"folder is a label ({len(empty)} empty of {len(self.classes)}): restore their "
                f"images or remove the folders that are not classes; {layout}"
            )

        samples = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(self.split_dir, name)
            if os.path.isdir(folder):
                samples.extend((path, label) for path in _scan_images(folder))
        if not samples:
            raise DatasetError(
                f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {self.split_dir}; {layout}"
            )
        if max_images is not None:
            samples = balanced_subset(samples, max_images, seed)
        # Paths packed into one byte array: a list of a million str objects would be copied page by page
        # into every forked DataLoader worker as reference counts are touched (DDP x workers x 270 MB).
        start = len(self.split_dir) + 1  # scanned paths all begin with split_dir + separator
        encoded = [p[start:].encode() for p, _ in samples]
        self._offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._labels = np.array([label for _, label in samples], dtype=np.int64)

        if skipped_log is not None:
            os.makedirs(skipped_log, exist_ok=True)
        self._bad: dict[int, str] = {}  # index -> error, for this process (a worker's own copy)

    def __len__(self) -> int:
        return len(self._labels)

    def path(self, index: int) -> str:
        lo, hi = self._offsets[index], self._offsets[index + 1]
        return os.path.join(self.split_dir, self._blob[lo:hi].tobytes().decode())

    @property
    def samples(self) -> list[tuple[str, int]]:
        """(path, label) of every image, as in torchvision's ImageFolder (built on each call)."""
        return [(self.path(i), int(y)) for i, y in enumerate(self._labels)]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        return first_readable(self.read, key, len(self), f"image files in {self.split_dir}")

    def read(self, index: int, sample_seed: int | None = None) -> tuple[torch.Tensor, int] | None:
        """The sample of exactly `index`, or None (reported) when its file cannot be read."""
        if index in self._bad:
            return None
        try:
            image = load_rgb(self.path(index))
        except Exception as e:  # any decoder failure (Pillow raises many types) means "skip this file"
            self._record_skip(index, f"{type(e).__name__}: {e}")
            return None
        return self.transform(image, sample_seed), int(self._labels[index])

    def transform(self, image: Image.Image, sample_seed: int | None = None) -> torch.Tensor:
        return preprocess(image, self.image_size, self.train, sample_seed)

    def _record_skip(self, index: int, error: str) -> None:
        self._bad[index] = error
        path = self.path(index)
        log.warning("skipping unreadable image %s (%s)", path, error)
        if self.skipped_log is not None:
            log_skipped(self.skipped_log, f"skipped-{self.split}", path, error)

    def skipped(self) -> list[tuple[str, str]]:
        """(path, error) of every file skipped so far: by this process, and by every process (workers,
        other ranks) that logged to `skipped_log`. Sorted by path, one entry per path."""
        prefix = self.split_dir + os.sep
        found = read_skipped(self.skipped_log, "skipped", lambda path: path.startswith(prefix))
        found.update({self.path(i): err for i, err in self._bad.items()})
        return sorted(found.items())

    def describe(self) -> dict:
        return {
            "name": "imagenet",
            "root": self.root,
            "split": self.split,
            "len": len(self),
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "max_images": self.max_images,
            "seed": self.seed,
            "skipped_log": self.skipped_log,
            "preprocessing": preprocessing(self.image_size, self.train),
        }


def balanced_subset(samples: list[tuple[str, int]], max_images: int, seed: int) -> list[tuple[str, int]]:
    """At most `max_images` samples, classes as balanced as possible (counts differ by at most one where
    classes have enough images): round-robin over classes, each class in a seeded random order, and kept in
    that round-robin order, so that any prefix (an evaluation reading the first N) is class-balanced too."""
    if max_images < 1:
        raise DatasetError(f"max_images must be positive, got {max_images}")
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        by_class.setdefault(label, []).append(i)
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(idx)) for _, idx in sorted(by_class.items())]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < max_images and any(depth < len(q) for q in queues):
        chosen.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return [samples[i] for i in chosen[:max_images]]
