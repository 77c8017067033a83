"""Pretokenized training data: the tokens of each training image's crops under one frozen tokenizer, written once
by the `pretokenize` stage (bench/train/pretokenize.py) and read by generator training instead of the images.

    tokens = TokenDataset("out/pretokenize-1a2b3c4d")           # or its manifest.json
    tokens.check(tokenizer=tokenizer_identity(source), data=cfg.data)  # TokensError unless they match
    crop_ids, label = tokens[i]                                  # int64 [C, K] (C crops of image i), int

A pretokenize folder:
    shard-00000.tokens.npy   [n, C, K] uint16 (int32 for codebooks over 65,536 codes): crop c of each image
    shard-00000.labels.npy   [n] int32
    shard-00000.index.npy    [n] int64: the training dataset's index of each row (unreadable images are absent)
    shard-00000.json         the shard's record (written after its arrays: a shard is done when it exists)
    manifest.json            written last, once every shard is done: the tokenizer's and the data's identity,
                             the crops, counts (images, skipped) and the shards
Each file is written atomically (bench.core.io); the arrays are plain .npy, opened memory-mapped.

Crops (`CROPS`): "flip" (C=2): 0 the centre crop (the generator's on-the-fly input), 1 its horizontal flip;
"ten" (C=10): the image resized (shorter side) to `ten_crop_size(S)` = 1.125 S and centre-cropped square, then
0 its centre S-crop and 1 that crop's flip, 2-9 the four corner crops (top-left, top-right, bottom-left,
bottom-right), each followed by its flip. Training picks one crop per sample and step with `crop_choice`, a pure
function of (seed, step, position in the global batch), so a resumed run sees the same tokens and the same choice
on the fly gives the same flips.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.data.base import DatasetError

MANIFEST = "manifest.json"
FORMAT = "titok-bench pretokenized v1"
CROPS = {"flip": 2, "ten": 10}
TEN_CROP_SCALE = 1.125
_CROP_SALT = 0x70C5  # keeps the crop stream apart from the loader's order stream of the same seed


class TokensError(DatasetError):
    """Pretokenized data that does not fit the training that reads it (another tokenizer, data or crop setting),
    or that is incomplete."""


def num_crops(crops: str) -> int:
    if crops not in CROPS:
        raise DatasetError(f"crops={crops!r}: expected one of {', '.join(CROPS)}")
    return CROPS[crops]


def ten_crop_size(image_size: int) -> int:
    """The square the ten crops of `image_size` are cut from."""
    return round(image_size * TEN_CROP_SCALE)


def crop_views(images: torch.Tensor, crops: str, image_size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, C, 3, S, S], the crops in `CROPS` order. "flip": the images are the centre crops
    (H = W = S); "ten": squares of ten_crop_size(S)."""
    if crops == "flip":
        return torch.stack([images, images.flip(-1)], 1)
    n = num_crops(crops)
    h, w, s = images.shape[-2], images.shape[-1], image_size
    top, left = (h - s) // 2, (w - s) // 2
    boxes = [(top, left), (0, 0), (0, w - s), (h - s, 0), (h - s, w - s)]
    views = [images[..., y : y + s, x : x + s] for y, x in boxes]
    out = torch.stack([v for view in views for v in (view, view.flip(-1))], 1)
    assert out.shape[1] == n
    return out


def crop_choice(seed: int, step: int, global_batch: int, crops: int) -> torch.Tensor:
    """The crop (0 .. crops-1) each position of step `step`'s global batch trains on: uniform, a pure function of
    (seed, step), so DDP ranks take slices of the same draw and a resumed run draws it again."""
    state = np.random.SeedSequence([seed, step, _CROP_SALT]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return torch.randint(crops, (global_batch,), generator=generator)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def token_dtype(codebook_size: int) -> np.dtype:
    return np.dtype(np.uint16) if codebook_size <= 2**16 else np.dtype(np.int32)


def manifest_path(path: str | os.PathLike) -> Path:
    """A pretokenize folder or its manifest -> the manifest."""
    path = Path(path).expanduser()
    return path / MANIFEST if path.is_dir() else path


def read_manifest(path: str | os.PathLike) -> dict:
    file = manifest_path(path)
    if not file.is_file():
        raise TokensError(
            f"no pretokenized data at {file}: run the pretokenize stage for this tokenizer first "
            f"(a folder without {MANIFEST} is unfinished; running the stage again completes it)"
        )
    manifest = json.loads(file.read_text())
    if manifest.get("format") != FORMAT:
        raise TokensError(f"{file} is not a manifest of pretokenized data ({FORMAT})")
    return manifest


# the data settings that fix which images (and pixels) the tokens are of; not where they are or how they load
DATA_KEYS = ("name", "image_size", "num_images", "num_classes", "seed")


def data_settings(data) -> dict:
    """The result-determining settings of a DataConfig (bench.train.recipes), as the manifest records them."""
    return {k: getattr(data, k) for k in DATA_KEYS}


class TokenDataset(Dataset):
    """The rows of a finished pretokenize folder: `ds[i]` = (int64 [C, K] token ids of row i's crops, label).
    Rows follow the training dataset's order, unreadable images left out (`index` gives each row's dataset index):
    without skipped images, row i is image i, and the training loader's order over it is the on-the-fly one."""

    takes_sample_seeds = False  # the crop is chosen per step (crop_choice), not at read time

    def __init__(self, path: str | os.PathLike):
        self.manifest = read_manifest(path)
        self.root = manifest_path(path).parent
        m = self.manifest
        self.crops, self.num_crops = m["crops"], m["num_crops"]
        self.num_tokens, self.codebook_size = m["num_tokens"], m["codebook_size"]
        self.shards = [s["name"] for s in m["shards"]]
        self._starts = list(np.cumsum([0] + [s["count"] for s in m["shards"]]))
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # opened lazily: per DataLoader worker
        if self._starts[-1] != m["count"]:
            raise TokensError(f"{self.root}: the shards hold {self._starts[-1]} rows, the manifest says {m['count']}")
        if m["count"] == 0:
            raise TokensError(f"{self.root} holds no tokens: none of its images could be read")

    def __len__(self) -> int:
        return self.manifest["count"]

    def _shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._arrays:
            base = self.root / self.shards[i]
            self._arrays[i] = (np.load(f"{base}.tokens.npy", mmap_mode="r"), np.load(f"{base}.labels.npy"))
        return self._arrays[i]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} pretokenized images in {self.root}")
        shard = bisect.bisect_right(self._starts, index) - 1
        tokens, labels = self._shard(shard)
        row = index - self._starts[shard]
        return torch.from_numpy(tokens[row].astype(np.int64)), int(labels[row])

    def index(self) -> np.ndarray:
        """The training dataset's index of every row."""
        return np.concatenate([np.load(self.root / f"{name}.index.npy") for name in self.shards])

    def check(
        self, *, tokenizer: str, data=None, num_tokens: int | None = None, codebook_size: int | None = None
    ) -> None:
        """TokensError unless these tokens are `tokenizer`'s (tokenizer_identity) on `data` (a DataConfig)."""
        m, where = self.manifest, manifest_path(self.root)
        if m["tokenizer"]["identity"] != tokenizer:
            raise TokensError(
                f"{where} holds the tokens of tokenizer {m['tokenizer']['source']} (identity "
                f"{m['tokenizer']['identity']}), not of the tokenizer given ({tokenizer}): pretokenize with this "
                f"tokenizer, or train with the tokenizer those tokens came from"
            )
        if num_tokens is not None and (num_tokens, codebook_size) != (self.num_tokens, self.codebook_size):
            raise TokensError(
                f"{where} holds {self.num_tokens} tokens of {self.codebook_size} codes per image, the "
                f"tokenizer makes {num_tokens} of {codebook_size}"
            )
        if data is not None:
            want = data_settings(data)
            diff = {k: (m["data"][k], want[k]) for k in DATA_KEYS if m["data"].get(k) != want[k]}
            if diff:
                said = ", ".join(f"data.{k}: tokens {a!r}, training {b!r}" for k, (a, b) in diff.items())
                raise TokensError(
                    f"{where} was made from other data than this training reads ({said}): "
                    "pretokenize the training data with the same data settings"
                )
