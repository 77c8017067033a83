"""What a user of the paper path has, made here with random weights: an ImageNet-layout tree and a weights cache
holding the registry's files in their real formats under their real names.

    python -m tests.infra.rehearsal DIR                    # DIR/imagenet and DIR/weights (the rehearsal's files)
    python -m tests.infra.rehearsal DIR --all              # every file the registry names (~25 GB)

Nothing here is a pretrained network: every weight is a seeded random initialisation, and both folders carry a
STANDIN.txt that says so. A run that reads them is only a rehearsal of the code path (preset=rehearsal tags its
runs smoke; the runs record each file's sha256).

The tree: <root>/{train,val}/<synset>/*.JPEG with ImageNet's synset names, images of mixed sizes (some smaller than
256 px, some portrait) and modes (RGB, greyscale, CMYK JPEGs, a palette PNG and an RGBA PNG named .JPEG, as
ImageNet has), each class a different colour and texture so the classes can be told apart, and a few corrupt files
(zero bytes, truncated, text) that the readers must skip.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

SYNSETS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041", "n01514668")
SIZES = ((320, 256), (256, 384), (500, 375), (200, 180), (256, 256), (640, 480))
NOTE = (
    "Random weights made by tests/infra/rehearsal.py for a rehearsal of the paper path: real formats and file "
    "names, NOT the released networks. Numbers computed with them mean nothing.\n"
)

# the files a rehearsal of grid=latent_vs_size and of the rehearsal's released cells read
REHEARSAL_RELEASED = ("TiTok-B-64", "TiTok-BL-64-VQ", "TiTok-BL-64-VAE")


# ---- the ImageNet tree --------------------------------------------------------------------------------------------
def _image(rng: np.random.Generator, label: int, size: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 image whose colour and stripe frequency depend on the class."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    hue = np.array([np.cos(label * 0.8), np.cos(label * 0.8 + 2.1), np.cos(label * 0.8 + 4.2)]) * 0.35 + 0.5
    stripes = 0.25 * np.sin(2 * np.pi * (label + 2) * (x + rng.uniform() * y))[..., None]
    noise = rng.normal(0, 0.06, (h, w, 3))
    return (np.clip(hue + stripes + noise, 0, 1) * 255).astype(np.uint8)


def _encode(rgb: np.ndarray, kind: str) -> bytes:
    im = Image.fromarray(rgb)
    buf = io.BytesIO()
    if kind == "gray":
        im.convert("L").save(buf, "JPEG", quality=90)
    elif kind == "cmyk":
        im.convert("CMYK").save(buf, "JPEG", quality=90)
    elif kind == "palette_png":
        im.convert("P").save(buf, "PNG")
    elif kind == "rgba_png":
        im.putalpha(200)
        im.save(buf, "PNG")
    else:
        im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


KINDS = ("rgb", "rgb", "rgb", "gray", "cmyk", "rgb", "palette_png", "rgb", "rgba_png")
CORRUPT = {"zero_bytes": b"", "not_an_image": b"this is not a JPEG\n"}


def write_imagenet_tree(
    root: Path, *, num_classes: int = 4, train_per_class: int = 10, val_per_class: int = 6, seed: int = 0
) -> dict:
    """The tree under `root`; returns what it holds (counts of images and of corrupt files per split)."""
    rng = np.random.default_rng(seed)
    counts = {}
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        images = corrupt = 0
        for label, synset in enumerate(SYNSETS[:num_classes]):
            folder = root / split / synset
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                size = SIZES[(i + label) % len(SIZES)]
                data = _encode(_image(rng, label, size), KINDS[(i + 2 * label) % len(KINDS)])
                (folder / f"{synset}_{split}_{i:04d}.JPEG").write_bytes(data)
                images += 1
            # every class also holds broken files (a truncated JPEG, zero bytes, text), as a crawl leaves them
            full = _encode(_image(rng, label, (256, 256)), "rgb")
            for name, data in {"truncated": full[: len(full) // 3], **CORRUPT}.items():
                (folder / f"{synset}_{split}_{name}.JPEG").write_bytes(data)
                corrupt += 1
        counts[split] = {"images": images, "corrupt": corrupt}
    (root / "STANDIN.txt").write_text(
        "Synthetic images in ImageNet's folder layout, made by "
        "tests/infra/rehearsal.py; a few files are corrupt on purpose.\n"
    )
    return counts


# ---- the weights cache ----------------------------------------------------------------------------------------
def _save_torch(state: dict, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def _random_torchvision(arch: str) -> dict:
    import torch
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None).state_dict()


def _write_inception(path: Path) -> None:
    # the stand-in the evaluation itself makes (He init keeps the features finite), under the released name
    import shutil

    from bench.eval.inception import standin_inception_weights

    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(standin_inception_weights(), path)


def _write_lpips(path: Path) -> None:
    import torch

    torch.manual_seed(0)
    _save_torch(
        {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) * 0.1 for i, c in enumerate((64, 128, 256, 512, 512))}, path
    )


def _write_reference_batch(path: Path, num_images: int = 16) -> None:
    """ADM's layout (mu, sigma, mu_s, sigma_s, arr_0 uint8 NHWC 256 px) with random statistics and fewer images."""
    from bench.eval.npz import save_reference_batch

    rng = np.random.default_rng(0)

    def stats(dim: int):
        a = rng.normal(size=(dim, dim + 8))
        return rng.normal(size=dim), a @ a.T / (dim + 8)

    mu, sigma = stats(2048)
    mu_s, sigma_s = stats(2023)
    images = np.stack([_image(rng, i % 4, (256, 256)) for i in range(num_images)])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_reference_batch(
        path,
        mu=mu,
        sigma=sigma,
        mu_s=mu_s,
        sigma_s=sigma_s,
        images=images,
        metadata={"made_by": "tests/infra/rehearsal.py", "random": True},
    )


def _write_teacher(path: Path) -> None:
    import torch

    import models
    from models.official_layout import to_official

    torch.manual_seed(0)
    model = models.build("MaskGIT-VQGAN")
    _save_torch(to_official(model.state_dict(), model), path)


def _official_config(name: str) -> dict:
    """config.json as the released hub folders hold it: the architecture under model.vq_model (tokenizers) or
    model.generator (generators), from tests/data/reference."""
    import models
    from tests.reference import official_checkpoints

    variant = models.VARIANTS[name]
    entry = official_checkpoints()[variant.official_key]
    if variant.kind == "generator":
        tokens = variant.config.num_tokens
        return {
            "model": {
                "vq_model": {"codebook_size": entry["codebook_size"], "num_latent_tokens": tokens},
                "generator": entry["config"],
            }
        }
    return {"model": {"vq_model": entry["config"]}, "dataset": {"preprocessing": {"crop_size": entry["image_size"]}}}


def _write_hub_folder(name: str, folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    import models
    from models.official_layout import to_official

    torch.manual_seed(0)
    model = models.build(name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_official_config(name), indent=2))
    state = {k: v.contiguous() for k, v in to_official(model.state_dict(), model).items()}
    save_file(state, str(folder / "model.safetensors"))


def _writers() -> dict:
    from bench import weights as W

    return {
        W.INCEPTION: _write_inception,
        W.LPIPS_VGG: _write_lpips,
        W.VGG16: lambda p: _save_torch(_random_torchvision("vgg16"), p),
        W.CONVNEXT_SMALL: lambda p: _save_torch(_random_torchvision("convnext_small"), p),
        W.TEACHER: _write_teacher,
        W.ADM_REFERENCE_256: _write_reference_batch,
    }


def shared_names() -> list[str]:
    """The files every grid's paper path reads: the shared networks, the teacher and the ADM reference batch."""
    return list(_writers())


def rehearsal_names() -> list[str]:
    """The registry entries the rehearsal's runs read: the shared networks, the teacher, the ADM batch and the
    released checkpoints of REHEARSAL_RELEASED with their generators."""
    import models

    gens = [
        n
        for n, v in models.VARIANTS.items()
        if v.kind == "generator" and v.hub_repo and any(n.endswith(":" + t) for t in REHEARSAL_RELEASED)
    ]
    return [*shared_names(), *REHEARSAL_RELEASED, *gens]


def write_weights_cache(cache: Path, names: list[str] | None = None) -> list[str]:
    """The registry's files (all, or `names`) in `cache`, each in its real format under its real name; files that
    are there already are kept. Returns the names written."""
    from bench import weights as W

    names = list(W.registry()) if names is None else names
    old = os.environ.get(W.ENV_CACHE)
    os.environ[W.ENV_CACHE] = str(cache)  # the writers (and the Inception stand-in) resolve paths in this cache
    try:
        writers, written = _writers(), []
        for name in names:
            if W.locate(name) is not None:
                continue
            entry = W.entry(name)
            if entry.is_folder:
                _write_hub_folder(name, W.path_of(name))
            else:
                writers[name](W.path_of(name))
            written.append(name)
        (cache / "STANDIN.txt").write_text(NOTE)
        return written
    finally:
        if old is None:
            os.environ.pop(W.ENV_CACHE)
        else:
            os.environ[W.ENV_CACHE] = old


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.infra.rehearsal", description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--all", action="store_true", help="every registry file, not only the rehearsal's (~25 GB)")
    args = ap.parse_args(argv)
    counts = write_imagenet_tree(args.folder / "imagenet")
    written = write_weights_cache(args.folder / "weights", None if args.all else rehearsal_names())
    print(f"ImageNet-layout tree: {args.folder / 'imagenet'} {counts}")
    print(f"weights cache (random weights): {args.folder / 'weights'}; written: {', '.join(written) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
