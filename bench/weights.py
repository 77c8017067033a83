"""The registry of pretrained files: what each is, where it comes from, where it lives, how it is checked.

    python -m bench.weights list                   # every entry: present / missing, cache path
    python -m bench.weights fetch inception-fid    # download into the cache (needs internet)
    python -m bench.weights verify                 # check the files that are present

Cache folder: $TITOK_BENCH_WEIGHTS, default ~/.cache/titok-bench/weights. Nothing is downloaded implicitly:
`require`/`resolve` only look in the cache and say exactly which file to place where; `fetch` is the only
network access (short timeout, never hangs) and TITOK_BENCH_OFFLINE=1 turns it off.

Checks. No full sha256 of any of these files was available when the registry was written (no internet), so:
- torchvision files carry the first 8 hex digits of their sha256 in the name (torch.hub convention, enforced
  by torchvision with check_hash=True): verified as a prefix;
- torch-fidelity's Inception file name also ends in 8 hex digits, but they are inherited from pytorch-fid's
  file and torch-fidelity never checks them: verified by structure (566 tensors with the right shapes);
- LPIPS linear layers: structure (5 layers, shapes); hub checkpoints: every file present and readable.
A full sha256 put in `sha256` with hash_kind "sha256" is checked exactly.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.core.io import atomic_file

INCEPTION = "inception-fid"
LPIPS_VGG = "lpips-vgg"
VGG16 = "vgg16"
CONVNEXT_SMALL = "convnext-small"
TEACHER = "MaskGIT-VQGAN"
ADM_REFERENCE_256 = "VIRTUAL_imagenet256_labeled"

ENV_CACHE = "TITOK_BENCH_WEIGHTS"
ENV_OFFLINE = "TITOK_BENCH_OFFLINE"
FETCH_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Entry:
    name: str
    filename: str  # path under cache_dir(); a folder for hub repos
    url: str  # download URL (hub repos: the repo page; files come from `downloads()`)
    description: str
    sha256: str | None = None
    hash_kind: str = "none"  # "sha256" (full), "sha256-prefix" or "none"
    hash_note: str = ""  # where the hash comes from, or why there is none, and what verify() checks instead
    hub_repo: str | None = None
    hub_files: tuple[str, ...] = ()  # the files of a hub-style folder
    structure: str | None = None  # "inception" | "lpips": verify() compares tensor names and shapes

    @property
    def is_folder(self) -> bool:
        return bool(self.hub_files)

    def downloads(self) -> list[tuple[str, str]]:
        """(relative path under cache_dir, URL) for every file of the entry."""
        if self.is_folder:
            return [(f"{self.filename}/{f}", f"https://huggingface.co/{self.hub_repo}/resolve/main/{f}")
                    for f in self.hub_files]
        return [(self.filename, self.url)]


_TV_NOTE = "first 8 hex digits of the sha256, from torchvision's file name (torch.hub checks them as a prefix)"
_HUB_NOTE = "no published sha256 known here; verify() checks that every file is present and readable"


def _fixed_entries() -> list[Entry]:
    return [
        Entry(INCEPTION, "weights-inception-2015-12-05-6726825d.pth",
              "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
              "weights-inception-2015-12-05-6726825d.pth",
              "torch-fidelity InceptionV3 (TF 2015-12-05 graph port): FID/IS/sFID/precision-recall features",
              hash_note="no verified sha256: the '6726825d' in the name comes from pytorch-fid's file and "
                        "torch-fidelity never checks it; verify() checks the 566 tensor names and shapes",
              structure="inception"),
        Entry(LPIPS_VGG, "lpips-v0.1-vgg.pth",
              "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
              "LPIPS v0.1 learned 1x1 linear layers on VGG16 features (upstream file name vgg.pth; "
              "taming-transformers ships the same layers as vgg.pth)",
              hash_note="no published sha256 known here; verify() checks the 5 layers' names and shapes",
              structure="lpips"),
        Entry(VGG16, "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
              "torchvision VGG16 IMAGENET1K_V1: the LPIPS feature network",
              sha256="397923af", hash_kind="sha256-prefix", hash_note=_TV_NOTE),
        Entry(CONVNEXT_SMALL, "convnext_small-0c510722.pth",
              "https://download.pytorch.org/models/convnext_small-0c510722.pth",
              "torchvision ConvNeXt-Small IMAGENET1K_V1: the stage-2 'perceptual' loss (MSE between logits)",
              sha256="0c510722", hash_kind="sha256-prefix", hash_note=_TV_NOTE),
        Entry(TEACHER, "maskgit-vqgan-imagenet-f16-256.bin",
              "https://huggingface.co/fun-research/TiTok/resolve/main/maskgit-vqgan-imagenet-f16-256.bin",
              "MaskGIT-VQGAN f16 256px (raw state_dict): proxy-code teacher and pixel decoder",
              hash_note="no published sha256 known here; verify() checks that the state_dict loads"),
        Entry(ADM_REFERENCE_256, "VIRTUAL_imagenet256_labeled.npz",
              "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
              "VIRTUAL_imagenet256_labeled.npz",
              "ADM reference batch for ImageNet 256x256 gFID/sFID/precision/recall (mu, sigma, mu_s, sigma_s, "
              "10k images): not weights, but fetched and cached the same way",
              hash_note="no published sha256 known here; verify() checks that it holds mu and sigma"),
    ]


def _hub_entries() -> list[Entry]:
    # The released TiTok tokenizers and generators, one hub-style folder each (config.json + model.safetensors),
    # the layout models.from_pretrained reads. Imported here, not at module level, to keep the CLI light.
    from models.variants import VARIANTS

    out = []
    for v in VARIANTS.values():
        if v.hub_repo:
            out.append(Entry(v.name, f"hub/{v.hub_repo.replace('/', '--')}", f"https://huggingface.co/{v.hub_repo}",
                             f"released {v.kind} {v.name} (hub repo {v.hub_repo})" + (f"; {v.note}" if v.note else ""),
                             hash_note=_HUB_NOTE, hub_repo=v.hub_repo,
                             hub_files=("config.json", "model.safetensors")))
    return out


_REGISTRY: dict[str, Entry] | None = None


def registry() -> dict[str, Entry]:
    """All entries by name (built once)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = {e.name: e for e in _fixed_entries() + _hub_entries()}
    return _REGISTRY


def entry(name: str) -> Entry:
    reg = registry()
    if name not in reg:
        import difflib

        close = difflib.get_close_matches(name, reg, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no pretrained weights named {name!r}.{hint} `python -m bench.weights list` shows them all.")
    return reg[name]


# ---- where files live --------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """$TITOK_BENCH_WEIGHTS or ~/.cache/titok-bench/weights (read at every call: tests may change it)."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "titok-bench" / "weights"


def path_of(name: str) -> Path:
    """Where the entry's file (or hub folder) belongs, present or not."""
    return cache_dir() / entry(name).filename


def standin_path(name: str) -> Path:
    """Where a generated random stand-in for `name` lives; the name says what it is."""
    return cache_dir() / "stand-ins" / f"STANDIN-random-init-{name}.pth"


def locate(name: str) -> Path | None:
    e = entry(name)
    p = cache_dir() / e.filename
    if e.is_folder:
        return p if all((p / f).is_file() for f in e.hub_files) else None
    return p if p.is_file() else None


class MissingWeightsError(RuntimeError):
    """A pretrained file is not in the cache; the message says which, where to put it and where to get it.
    Build one with `MissingWeightsError.for_entry(name)`; `.name` and `.path` say which entry and where."""

    def __init__(self, message: str, name: str | None = None, path: Path | None = None):
        super().__init__(message)
        self.name, self.path = name, path

    def __reduce__(self):  # picklable with its fields (submitit sends a job's exception back to the driver)
        return type(self), (str(self), self.name, self.path)

    @classmethod
    def for_entry(cls, name: str, reason: str = "") -> MissingWeightsError:
        e = entry(name)
        path = cache_dir() / e.filename
        lines = [f"missing pretrained weights {name!r}: {e.description}" + (f" ({reason})" if reason else "")]
        if e.is_folder:
            lines.append(f"  place the files {', '.join(e.hub_files)} in the folder: {path}/")
            lines += [f"  source: {url}" for _, url in e.downloads()]
        else:
            lines.append(f"  file: {e.filename}")
            lines.append(f"  place it at: {path}")
            lines.append(f"  source: {e.url}")
        lines.append(f"  or run: python -m bench.weights fetch {name}   (needs internet)")
        lines.append(f"  (the cache folder is ${ENV_CACHE}, now {cache_dir()}; smoke runs may pass "
                     "allow_random=True to use a random stand-in, tagged weights.random=true)")
        return cls("\n".join(lines), name, path)


def require(name: str) -> Path:
    p = locate(name)
    if p is None:
        raise MissingWeightsError.for_entry(name)
    return p


@dataclass(frozen=True)
class Resolved:
    path: Path | None
    random: bool  # True: no file, the caller builds a seeded random stand-in and tags its numbers


def resolve(name: str, allow_random: bool) -> Resolved:
    p = locate(name)
    if p is not None:
        return Resolved(p, False)
    if allow_random:
        return Resolved(None, True)
    raise MissingWeightsError.for_entry(name)


# ---- download ----------------------------------------------------------------------------------------------
def _download(url: str, dest: Path, timeout: float) -> None:
    from tqdm import tqdm

    # The timeout bounds connect and every read: an offline machine fails in seconds instead of hanging. A
    # half-downloaded file never sits under the real name.
    with urllib.request.urlopen(url, timeout=timeout) as r, atomic_file(dest) as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not sys.stderr.isatty()) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))


def fetch(name: str, timeout: float = FETCH_TIMEOUT_S) -> Path:
    """Download the entry into the cache (no-op when present and verified); MissingWeightsError when offline."""
    e = entry(name)
    if locate(name) is not None and verify(name):
        return locate(name)
    if os.environ.get(ENV_OFFLINE, "") not in ("", "0"):
        raise MissingWeightsError.for_entry(name, f"offline mode: {ENV_OFFLINE} is set")
    for rel, url in e.downloads():
        try:
            _download(url, cache_dir() / rel, timeout)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            reason = f"download of {url} failed: {type(err).__name__}: {err}; offline?"
            raise MissingWeightsError.for_entry(name, reason) from None
    if not verify(name):
        raise RuntimeError(f"downloaded {name!r} to {path_of(name)} but it fails verification "
                           f"({e.hash_kind}: {e.hash_note}); delete it and retry, or check the source {e.url}")
    return path_of(name)


# ---- checks ------------------------------------------------------------------------------------------------
def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def expected_shapes(kind: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes a structurally valid file of this kind holds."""
    import torch

    if kind == "lpips":
        return {f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    if kind == "inception":
        # torch-fidelity's InceptionV3 uses torchvision's module names for every parameter and buffer (566
        # tensors, BatchNorm counters included); only the classifier has 1008 classes and there is no aux head.
        import torchvision

        with torch.device("meta"):
            net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                                  num_classes=1008)
        return {k: tuple(v.shape) for k, v in net.state_dict().items()}
    raise ValueError(f"unknown structure kind {kind!r}")


def _load_tensors(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_slice(k).get_shape() for k in f.keys()}
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def verify(name: str) -> bool:
    """True when the file is present and passes its check (see hash_kind / hash_note); False otherwise."""
    e = entry(name)
    p = locate(name)
    if p is None:
        return False
    if e.hash_kind == "sha256":
        return sha256_of(p) == e.sha256
    if e.hash_kind == "sha256-prefix":
        return sha256_of(p).startswith(e.sha256)
    try:
        if e.structure:
            want = expected_shapes(e.structure)
            got = _load_tensors(p)
            return {k: tuple(v) for k, v in got.items() if k in want} == want
        files = [p / f for f in e.hub_files] if e.is_folder else [p]
        for f in files:
            if f.suffix == ".json":
                import json

                json.loads(f.read_text())
            elif f.suffix == ".npz":
                import numpy as np

                with np.load(f) as z:
                    if not {"mu", "sigma"} <= set(z.files):
                        return False
            else:
                _load_tensors(f)
        return True
    except Exception:  # unreadable, truncated, not a state_dict: all mean "not the right file"
        return False


# ---- CLI ---------------------------------------------------------------------------------------------------
def _cli_list(names: list[str]) -> int:
    rows = [("name", "status", "check", "path")]
    for n in names:
        e = entry(n)
        check = {"sha256": "sha256", "sha256-prefix": "sha256 prefix"}.get(e.hash_kind) or (
            "structure" if e.structure else "readable")
        rows.append((n, "present" if locate(n) else "missing", check, str(path_of(n))))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    print(f"\ncache: {cache_dir()}  (${ENV_CACHE}); fetch with: python -m bench.weights fetch <name>")
    return 0


def _cli_fetch(names: list[str]) -> int:
    failed = 0
    for n in names:
        try:
            print(f"{n}: {fetch(n)}")
        except (MissingWeightsError, RuntimeError) as err:
            print(f"{n}: FAILED\n{err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _cli_verify(names: list[str]) -> int:
    bad = 0
    for n in names:
        e = entry(n)
        p = locate(n)
        if p is None:
            print(f"{n}: missing ({path_of(n)})")
            continue
        ok = verify(n)
        bad += not ok
        digest = "" if e.is_folder else f"  sha256={sha256_of(p)}"
        print(f"{n}: {'OK' if ok else 'FAILED'} ({e.hash_kind}; {e.hash_note or 'full sha256'}){digest}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.weights", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["list", "fetch", "verify"])
    ap.add_argument("names", nargs="*", help="entries (default: all; fetch needs at least one)")
    args = ap.parse_args(argv)
    try:
        for n in args.names:
            entry(n)
    except KeyError as err:
        print(err.args[0], file=sys.stderr)
        return 2
    if args.command == "fetch" and not args.names:
        print("name the entries to fetch (python -m bench.weights list shows them)", file=sys.stderr)
        return 2
    names = args.names or list(registry())
    return {"list": _cli_list, "fetch": _cli_fetch, "verify": _cli_verify}[args.command](names)


if __name__ == "__main__":
    sys.exit(main())
