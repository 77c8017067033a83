"""Tests of bench/data: synthetic images, the image-folder dataset, and the training/evaluation loaders.

.venv/bin/pytest tests/data/test_datasets.py
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from bench.data import (
    DatasetError,
    StepBatchSampler,
    build_dataset,
    eval_shard,
    infinite_batches,
    make_eval_loader,
    make_loader,
)
from bench.data.folder import load_rgb
from bench.data.synthetic import MAX_CLASSES, class_attributes

# ---- synthetic ----------------------------------------------------------------------------------------


def synthetic(split="train", size=32, n=100, classes=10, seed=0):
    return build_dataset(
        "synthetic", split=split, image_size=size, train=split == "train", num_images=n, num_classes=classes, seed=seed
    )


def test_synthetic_is_deterministic_per_seed_split_and_index():
    a, b = synthetic(), synthetic()
    x0, y0 = a[3]
    assert torch.equal(x0, b[3][0]) and y0 == b[3][1]
    assert not torch.equal(x0, a[4][0])
    assert not torch.equal(x0, synthetic(split="val")[3][0])
    assert not torch.equal(x0, synthetic(seed=1)[3][0])


@pytest.mark.parametrize("size", [32, 48, 100, 512])
def test_synthetic_any_resolution(size):
    x, y = synthetic(size=size, classes=1000)[7]
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and x.std() > 0.05
    assert y == 7


def test_synthetic_class_attributes_are_distinct_up_to_1000():
    assert len({class_attributes(c) for c in range(MAX_CLASSES)}) == MAX_CLASSES
    assert len({a for c in range(10) for a in class_attributes(c)}) == 10  # first ten: all attributes differ
    ds = synthetic(n=2000, classes=1000)
    assert ds.num_classes == 1000 and {ds[i][1] for i in range(0, 2000, 7)} <= set(range(1000))


def test_synthetic_classes_are_separable_by_a_trivial_classifier():
    def features(ds):
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return F.adaptive_avg_pool2d(torch.stack(xs), 8).flatten(1), torch.tensor(ys)

    x_train, y_train = features(synthetic(n=500))
    x_val, y_val = features(synthetic(split="val", n=200))
    means = torch.stack([x_train[y_train == c].mean(0) for c in range(10)])
    assert torch.pdist(means).min() > 0.3  # every pair of class means differs
    accuracy = (torch.cdist(x_val, means).argmin(1) == y_val).float().mean().item()
    assert accuracy > 0.25, accuracy  # chance is 0.1


def test_synthetic_bad_settings_are_dataset_errors():
    for kwargs in ({"size": 16}, {"size": 1024}, {"classes": 1001}, {"classes": 0}, {"split": "test"}):
        with pytest.raises(DatasetError):
            synthetic(**kwargs)
    assert issubclass(DatasetError, ValueError)
    with pytest.raises(DatasetError, match="unknown dataset"):
        build_dataset("cifar", split="train", image_size=32, train=True)


def test_synthetic_describe():
    d = synthetic(n=123).describe()
    assert d["name"] == "synthetic" and d["split"] == "train" and d["len"] == 123 and "preprocessing" in d


# ---- image folder -------------------------------------------------------------------------------------

BAD_FILES = ("fox/garbage.jpg", "fox/truncated.jpg")


def _png16_rgb(width, height, rgb16):
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + struct.pack(">3H", *rgb16) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">2I5B", width, height, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """root/{train,val}/<class>/ with every kind of file the reader must handle."""
    root = tmp_path_factory.mktemp("imagenet")
    for d in ("train/cat", "train/dog", "train/fox", "val/cat", "val/dog"):
        (root / d).mkdir(parents=True)
    t = root / "train"
    Image.fromarray(_noise(30, 40)).save(t / "cat/rgb.jpg", quality=95)
    Image.fromarray(_noise(50, 30)[..., 0]).save(t / "cat/gray.jpg")
    Image.new("CMYK", (36, 36), (0, 255, 255, 0)).save(t / "cat/cmyk.jpg")
    (t / "cat/notes.txt").write_text("not an image, not listed")
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (16, 0, 32, 32))  # right half opaque blue, left half index 0 = transparent red
    palette.save(t / "dog/palette.png", transparency=0)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (0, 0, 0, 0)  # transparent black: white after compositing
    rgba[:, 16:] = (0, 200, 0, 255)
    Image.fromarray(rgba, "RGBA").save(t / "dog/rgba.png")
    Image.new("LA", (32, 32), (60, 0)).save(t / "dog/la.png")
    Image.fromarray(np.full((32, 32), 128 * 257, np.uint16)).save(t / "dog/gray16.png")
    (t / "dog/rgb16.png").write_bytes(_png16_rgb(32, 32, (65535, 32896, 0)))
    jpeg = io.BytesIO()
    Image.fromarray(_noise(64, 64, seed=1)).save(jpeg, "JPEG")
    (t / "fox/truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (t / "fox/garbage.jpg").write_bytes(np.random.default_rng(2).bytes(500))
    Image.fromarray(_noise(40, 40, seed=3)).save(t / "fox/ok.png")
    Image.fromarray(_noise(30, 40, seed=4)).save(root / "val/cat/a.jpg")
    Image.fromarray(_noise(30, 40, seed=5)).save(root / "val/dog/b.jpg")
    return root


def folder(root, split="train", size=24, train=False, **kwargs):
    return build_dataset("imagenet", root=str(root), split=split, image_size=size, train=train, **kwargs)


def _index(ds, name):
    return [os.path.relpath(p, ds.split_dir) for p, _ in ds.samples].index(name)


def test_folder_reads_every_valid_mode_as_rgb(tree):
    ds = folder(tree)
    assert ds.num_classes == 3 and len(ds) == 11  # notes.txt is not listed
    for i, (path, label) in enumerate(ds.samples):
        if os.path.relpath(path, ds.split_dir) in BAD_FILES:
            continue
        x, y = ds[i]
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and y == label
        assert 0 <= x.min() and x.max() <= 1
    assert ds.skipped() == []  # nothing bad was touched


def test_folder_conversions(tree):
    def pixel(name, xy):
        return load_rgb(str(tree / "train" / name)).getpixel(xy)

    assert pixel("dog/rgba.png", (2, 2)) == (255, 255, 255)  # transparent -> white, not black
    assert pixel("dog/rgba.png", (20, 2)) == (0, 200, 0)
    assert pixel("dog/palette.png", (2, 2)) == (255, 255, 255)
    assert pixel("dog/palette.png", (20, 2)) == (0, 0, 255)
    assert pixel("dog/la.png", (2, 2)) == (255, 255, 255)  # alpha 0 everywhere
    assert pixel("dog/gray16.png", (2, 2)) == (128, 128, 128)  # scaled, not clipped to 255
    assert pixel("dog/rgb16.png", (2, 2)) == (255, 128, 0)
    r, g, b = pixel("cat/cmyk.jpg", (10, 10))
    assert r > 200 and g < 50 and b < 50
    assert load_rgb(str(tree / "train/cat/gray.jpg")).mode == "RGB"


def test_folder_bad_files_are_replaced_and_reported(tree):
    ds = folder(tree)
    garbage, truncated = _index(ds, "fox/garbage.jpg"), _index(ds, "fox/truncated.jpg")
    assert truncated == len(ds) - 1
    x, y = ds[garbage]
    assert torch.equal(x, ds[garbage + 1][0]) and y == 2  # the next index, fox/ok.png
    x, y = ds[truncated]
    assert torch.equal(x, ds[0][0]) and y == 0  # wraps around to the first image
    report = dict(ds.skipped())
    assert sorted(report) == sorted(str(tree / "train" / f) for f in BAD_FILES)
    assert "truncated" in report[str(tree / "train/fox/truncated.jpg")]


def test_folder_skips_are_reported_across_worker_processes(tree, tmp_path):
    ds = folder(tree, skipped_log=str(tmp_path / "skipped"))
    seen = sum(len(y) for _, y in make_eval_loader(ds, batch_size=3, num_workers=2))
    assert seen == len(ds)  # batches keep their size
    assert [p for p, _ in ds.skipped()] == sorted(str(tree / "train" / f) for f in BAD_FILES)
    # the same folder shared with another split keeps the reports apart
    assert folder(tree, split="val", skipped_log=str(tmp_path / "skipped")).skipped() == []


def test_folder_eval_transform_is_resize_bicubic_then_center_crop(tree):
    ds = folder(tree, size=24)
    reference = T.Compose(
        [T.Resize(24, interpolation=T.InterpolationMode.BICUBIC, antialias=True), T.CenterCrop(24), T.ToTensor()]
    )
    i = _index(ds, "cat/rgb.jpg")
    with Image.open(ds.samples[i][0]) as im:
        assert torch.equal(ds[i][0], reference(im.convert("RGB")))
    assert torch.equal(ds[i][0], ds[i][0])


def test_folder_train_transform_is_seeded_random_crop_and_flip(tree):
    ds = folder(tree, size=24, train=True)
    i = _index(ds, "cat/rgb.jpg")  # 40 x 30 -> 32 x 24: crops differ in their left edge
    crops = [ds[(i, s)][0] for s in range(8)]
    assert all(c.shape == (3, 24, 24) for c in crops)
    assert torch.equal(crops[3], ds[(i, 3)][0])  # a sample seed fixes crop and flip
    assert len({c.numpy().tobytes() for c in crops}) > 2
    assert folder(tree, size=32, train=True)[(0, 1)][0].shape == (3, 32, 32)


def test_folder_labels_subsets_and_describe(tree):
    val = folder(tree, split="val")
    assert val.num_classes == 3 and [y for _, y in val.samples] == [0, 1]  # train/ defines the labels
    sub = folder(tree, num_images=3, seed=5)
    assert sorted(y for _, y in sub.samples) == [0, 1, 2]  # one per class
    assert sub.samples == folder(tree, num_images=3, seed=5).samples
    two = folder(tree, num_classes=2)
    assert two.num_classes == 2 and {y for _, y in two.samples} == {0, 1}
    d = folder(tree, train=True).describe()
    assert d["name"] == "imagenet" and d["root"] == str(tree) and d["split"] == "train" and d["len"] == 11
    assert "bicubic" in d["preprocessing"] and "random crop" in d["preprocessing"]


def test_folder_layout_errors_name_the_path(tree, tmp_path):
    cases = {
        str(tmp_path / "nowhere"): ("train", str(tmp_path / "nowhere")),
        str(tree): ("test", str(tree / "test")),
    }
    (tmp_path / "empty/train").mkdir(parents=True)
    cases[str(tmp_path / "empty")] = ("train", str(tmp_path / "empty/train"))
    (tmp_path / "hollow/train/cat").mkdir(parents=True)  # class folders without images
    cases[str(tmp_path / "hollow")] = ("train", str(tmp_path / "hollow/train"))
    (tmp_path / "flat/val").mkdir(parents=True)  # ImageNet val as shipped: no class folders
    Image.new("RGB", (8, 8)).save(tmp_path / "flat/val/x.JPEG")
    cases[str(tmp_path / "flat")] = ("val", str(tmp_path / "flat/val"))
    for root, (split, path) in cases.items():
        with pytest.raises(DatasetError, match="expected") as e:
            folder(root, split=split)
        assert path in str(e.value)
    with pytest.raises(DatasetError, match="class folders"):
        folder(tmp_path / "flat", split="val")
    with pytest.raises(DatasetError, match="root"):
        build_dataset("imagenet", split="train", image_size=24, train=True)
    (tmp_path / "odd/train/cat").mkdir(parents=True)
    (tmp_path / "odd/val/owl").mkdir(parents=True)
    with pytest.raises(DatasetError, match="owl"):
        folder(tmp_path / "odd", split="val")


# ---- loaders ------------------------------------------------------------------------------------------


class Keys(Dataset):
    """Returns the key it is given: [index, sample_seed or -1]."""

    def __init__(self, n, takes_sample_seeds=True):
        self.n, self.takes_sample_seeds = n, takes_sample_seeds

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        return torch.tensor(list(key) if isinstance(key, tuple) else [key, -1])


def take(loader, steps):
    return list(itertools.islice(infinite_batches(loader), steps))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_reproduces_the_uninterrupted_sequence(num_workers):
    ds = Keys(50)  # 12 batches of 4 per epoch: 40 steps cross three epoch boundaries
    full = take(make_loader(ds, batch_size=4, seed=3), 40)
    assert [s for s, _ in full] == list(range(40))
    resumed = take(make_loader(ds, batch_size=4, seed=3, start_step=17, num_workers=num_workers), 23)
    assert [s for s, _ in resumed] == list(range(17, 40))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(full[17:], resumed))
    from_dataset = list(itertools.islice(infinite_batches(ds, batch_size=4, seed=3, start_step=17), 23))
    assert all(s == t and torch.equal(a, b) for (s, a), (t, b) in zip(resumed, from_dataset))


def test_resume_reproduces_crops_of_the_folder_dataset(tree):
    ds = folder(tree, train=True)
    full = take(make_loader(ds, batch_size=2, seed=0), 9)
    resumed = take(make_loader(ds, batch_size=2, seed=0, start_step=6), 3)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for (_, a), (_, b) in zip(full[6:], resumed))


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    sampler = StepBatchSampler(48, batch_size=4, seed=1)
    epoch0 = [i for _, b in take(make_loader(Keys(48, False), batch_size=4, seed=1), 12) for i in b[:, 0]]
    assert sorted(epoch0) == list(range(48)) and epoch0 == sampler.epoch_order(0)[0].tolist()
    assert not torch.equal(sampler.epoch_order(0)[0], sampler.epoch_order(1)[0])
    assert not torch.equal(sampler.epoch_order(0)[0], StepBatchSampler(48, batch_size=4, seed=2).epoch_order(0)[0])
    plain = next(iter(make_loader(Keys(48, False), batch_size=4, seed=1)))
    assert (plain[:, 1] == -1).all()  # datasets without takes_sample_seeds get plain indices
    ordered = next(iter(make_loader(Keys(48, False), batch_size=4, seed=1, shuffle=False)))
    assert ordered[:, 0].tolist() == [0, 1, 2, 3]


def test_ranks_take_disjoint_shards_of_the_global_batch():
    ds = Keys(50)
    single = take(make_loader(ds, batch_size=6, seed=7), 20)
    ranks = [take(make_loader(ds, batch_size=3, seed=7, rank=r, world_size=2), 20) for r in range(2)]
    for (s, whole), (s0, part0), (s1, part1) in zip(single, *ranks):
        assert s == s0 == s1
        assert not set(part0[:, 0].tolist()) & set(part1[:, 0].tolist())
        assert torch.equal(torch.cat([part0, part1]), whole)


def test_drop_last_false_pads_the_last_global_batch():
    loader = make_loader(Keys(10), batch_size=4, seed=0, drop_last=False)
    batches = [b for _, b in take(loader, 3)]
    seen = torch.cat(batches)[:, 0].tolist()
    assert len(seen) == 12 and set(seen) == set(range(10))
    with pytest.raises(ValueError, match="global batch"):
        make_loader(Keys(5), batch_size=4, seed=0, world_size=2)


def test_synthetic_through_the_loader():
    images, labels = next(iter(make_loader(synthetic(n=20), batch_size=4, seed=0)))
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4,)


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_eval_shards_cover_every_index_once_in_order(world_size):
    for n in (0, 1, 7, 101):
        shards = [list(eval_shard(n, r, world_size)) for r in range(world_size)]
        assert sum(shards, []) == list(range(n))
    n = 23
    outputs = [
        torch.cat(list(make_eval_loader(Keys(n), batch_size=4, rank=r, world_size=world_size)))
        for r in range(world_size)
    ]
    assert torch.cat(outputs)[:, 0].tolist() == list(range(n))


def test_folder_subset_prefixes_are_class_balanced(tmp_path):
    """An evaluation reads the first N images of its subset: every prefix must cover the classes evenly, not the
    first classes in folder order."""
    for c in range(4):
        (tmp_path / f"train/c{c}").mkdir(parents=True)
        for i in range(5):
            Image.fromarray(_noise(8, 8, seed=10 * c + i)).save(tmp_path / f"train/c{c}/{i}.png")
    sub = folder(tmp_path, num_images=12, seed=1)
    assert sorted(y for _, y in sub.samples[:4]) == [0, 1, 2, 3]
    assert sorted(y for _, y in sub.samples[:8]) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_folder_empty_class_folders_and_too_many_classes_are_errors(tmp_path):
    """An empty class folder would take a label (shifting every later class); asking for more classes than the
    folder has fails at once with the count to set."""
    for c in ("a", "b", "c"):
        (tmp_path / f"train/{c}").mkdir(parents=True)
    for c in ("a", "c"):
        Image.fromarray(_noise(8, 8)).save(tmp_path / f"train/{c}/x.png")
    with pytest.raises(DatasetError, match=r"\['b'\].*hold no image files"):
        folder(tmp_path)
    Image.fromarray(_noise(8, 8)).save(tmp_path / "train/b/x.png")
    with pytest.raises(DatasetError, match="data.num_classes=3"):
        folder(tmp_path, num_classes=1000)
