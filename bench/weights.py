"""The registry of pretrained files: what each is, where it comes from, where it lives, how it is checked.

    python -m bench.weights list                   # every entry: present / missing, cache path
    python -m bench.weights fetch inception-fid    # download into the cache (needs internet)
    python -m bench.weights verify                 # check the files that are present
    python -m bench.weights pin                    # write the commits of the hub files present into the pin file

Cache folder: $TITOK_BENCH_WEIGHTS, default ~/.cache/titok-bench/weights, the one cache of the project
(models.checkpoints owns its location and the hub fetch; models.from_pretrained(name) reads the same hub/ folders).
The benchmark never downloads: `require`/`resolve` only look in the cache and say exactly which file to place
where. Two explicit front doors download: `fetch` here and models.from_pretrained(name or hub repo id), the zoo's
(short timeouts, never hang); TITOK_BENCH_OFFLINE=1 turns both off.

Provenance. Hub files are fetched at the commit models/hub_revisions.json pins for their repo (`Entry.revision`;
empty as shipped: written offline, so fetches take main and record what they got); other files come from fixed URLs.
Every fetch writes a source record beside what it fetched (repo, revision, resolved commit, URL, sha256 per file),
`resolve`/`require`/`verify` check the files against it, and a stage that used an entry logs its resolved
revision (or URL) and sha256 (`recording`, `provenance`; tags titok.weights.<name>.*, bench.stages.task).

Checks. No full sha256 of any of these files was available when the registry was written (no internet), so:
- torchvision files carry the first 8 hex digits of their sha256 in the name (torch.hub convention, enforced
  by torchvision with check_hash=True): verified as a prefix;
- torch-fidelity's Inception file name also ends in 8 hex digits, but they are inherited from pytorch-fid's
  file and torch-fidelity never checks them: verified by structure (566 tensors with the right shapes);
- LPIPS linear layers: structure (5 layers, shapes); hub checkpoints: every file present and readable.
A full sha256 put in `sha256` with hash_kind "sha256" is checked exactly.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.core.io import atomic_file, atomic_write_json
from models import checkpoints as ckpt
from models import variants

INCEPTION = "inception-fid"
LPIPS_VGG = "lpips-vgg"
VGG16 = "vgg16"
CONVNEXT_SMALL = "convnext-small"
TEACHER = "MaskGIT-VQGAN"
ADM_REFERENCE_256 = "VIRTUAL_imagenet256_labeled"
TITOK_REPO = "fun-research/TiTok"  # the hub repo holding the teacher's raw file

ENV_CACHE = ckpt.ENV_CACHE
ENV_OFFLINE = ckpt.ENV_OFFLINE
FETCH_TIMEOUT_S = ckpt.HUB_TIMEOUT_S


@dataclass(frozen=True)
class Entry:
    name: str
    filename: str  # path under cache_dir(); a folder for hub repos
    url: str  # download URL (hub repos: the repo page; files come from `downloads()`)
    description: str
    sha256: str | None = None
    hash_kind: str = "none"  # "sha256" (full), "sha256-prefix" or "none"
    hash_note: str = ""  # where the hash comes from, or why there is none, and what verify() checks instead
    hub_repo: str | None = None  # the hub repo it comes from (a folder's repo, or the repo of a hub file)
    hub_files: tuple[str, ...] = ()  # the files of a hub-style folder
    structure: str | None = None  # "inception" | "lpips": verify() compares tensor names and shapes
    revision: str | None = None  # hub files: the commit models/hub_revisions.json pins (None: not pinned yet)

    @property
    def is_folder(self) -> bool:
        return bool(self.hub_files)

    def downloads(self, commit: str | None = None) -> list[tuple[str, str]]:
        """(relative path under cache_dir, URL) for every file of the entry; hub files at `commit` (default: the
        pinned revision, else main)."""
        at = commit or self.revision or "main"
        if self.is_folder:
            return [
                (f"{self.filename}/{f}", f"https://huggingface.co/{self.hub_repo}/resolve/{at}/{f}")
                for f in self.hub_files
            ]
        if self.hub_repo:
            return [(self.filename, f"https://huggingface.co/{self.hub_repo}/resolve/{at}/{self.filename}")]
        return [(self.filename, self.url)]


_TV_NOTE = "first 8 hex digits of the sha256, from torchvision's file name (torch.hub checks them as a prefix)"
_HUB_NOTE = "no published sha256 known here; verify() checks that every file is present and readable"


def _fixed_entries() -> list[Entry]:
    teacher_rev = variants.pinned_revision(TITOK_REPO)
    return [
        Entry(
            INCEPTION,
            "weights-inception-2015-12-05-6726825d.pth",
            "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
            "weights-inception-2015-12-05-6726825d.pth",
            "torch-fidelity InceptionV3 (TF 2015-12-05 graph port): FID/IS/sFID/precision-recall features",
            hash_note="no verified sha256: the '6726825d' in the name comes from pytorch-fid's file and "
            "torch-fidelity never checks it; verify() checks the 566 tensor names and shapes",
            structure="inception",
        ),
        Entry(
            LPIPS_VGG,
            "lpips-v0.1-vgg.pth",
            "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
            "LPIPS v0.1 learned 1x1 linear layers on VGG16 features (upstream file name vgg.pth; "
            "taming-transformers ships the same layers as vgg.pth)",
            hash_note="no published sha256 known here; verify() checks the 5 layers' names and shapes",
            structure="lpips",
        ),
        Entry(
            VGG16,
            "vgg16-397923af.pth",
            "https://download.pytorch.org/models/vgg16-397923af.pth",
            "torchvision VGG16 IMAGENET1K_V1: the LPIPS feature network",
            sha256="397923af",
            hash_kind="sha256-prefix",
            hash_note=_TV_NOTE,
        ),
        Entry(
            CONVNEXT_SMALL,
            "convnext_small-0c510722.pth",
            "https://download.pytorch.org/models/convnext_small-0c510722.pth",
            "torchvision ConvNeXt-Small IMAGENET1K_V1: the stage-2 'perceptual' loss (MSE between logits)",
            sha256="0c510722",
            hash_kind="sha256-prefix",
            hash_note=_TV_NOTE,
        ),
        Entry(
            TEACHER,
            "maskgit-vqgan-imagenet-f16-256.bin",
            f"https://huggingface.co/{TITOK_REPO}/resolve/{teacher_rev or 'main'}/maskgit-vqgan-imagenet-f16-256.bin",
            "MaskGIT-VQGAN f16 256px (raw state_dict): proxy-code teacher and pixel decoder",
            hash_note="no published sha256 known here; verify() checks that the state_dict loads",
            hub_repo=TITOK_REPO,
            revision=teacher_rev,
        ),
        Entry(
            ADM_REFERENCE_256,
            "VIRTUAL_imagenet256_labeled.npz",
            "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
            "VIRTUAL_imagenet256_labeled.npz",
            "ADM reference batch for ImageNet 256x256 gFID/sFID/precision/recall (mu, sigma, mu_s, sigma_s, "
            "10k images): not weights, but fetched and cached the same way",
            hash_note="no published sha256 known here; verify() checks that it holds mu and sigma",
        ),
    ]


def _hub_entries() -> list[Entry]:
    # The released TiTok tokenizers and generators, one hub-style folder each (config.json + model.safetensors),
    # the folders models.from_pretrained reads (models.checkpoints.hub_folder).
    out = []
    for v in variants.VARIANTS.values():
        if v.hub_repo:
            out.append(
                Entry(
                    v.name,
                    ckpt.hub_folder_name(v.hub_repo),
                    f"https://huggingface.co/{v.hub_repo}",
                    f"released {v.kind} {v.name} (hub repo {v.hub_repo})" + (f"; {v.note}" if v.note else ""),
                    hash_note=_HUB_NOTE,
                    hub_repo=v.hub_repo,
                    hub_files=ckpt.HUB_FILES,
                    revision=v.revision,
                )
            )
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
    return ckpt.weights_cache_dir()


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
        lines.append(
            f"  (the cache folder is ${ENV_CACHE}, now {cache_dir()}; smoke runs may pass "
            "allow_random=True to use a random stand-in, tagged weights.random=true)"
        )
        return cls("\n".join(lines), name, path)


def require(name: str) -> Path:
    """The entry's file in the cache, checked against its source record (models.checkpoints.CheckpointError when
    it changed since it was fetched, or holds another commit than the pinned one); the use is recorded."""
    p = locate(name)
    if p is None:
        raise MissingWeightsError.for_entry(name)
    ckpt.check_source(p, entry(name).revision)
    _note_use(name, p)
    return p


@dataclass(frozen=True)
class Resolved:
    path: Path | None
    random: bool  # True: no file, the caller builds a seeded random stand-in and tags its numbers


def resolve(name: str, allow_random: bool) -> Resolved:
    """`require`, or with allow_random a missing file gives Resolved(None, True): a stand-in (recorded as one)."""
    if locate(name) is not None or not allow_random:
        return Resolved(require(name), False)
    _note_use(name, None)
    return Resolved(None, True)


def name_of(path: str | Path) -> str | None:
    """The entry whose file (or folder) in the cache `path` is, if any."""
    p = Path(path).expanduser()
    if not p.exists():
        return None
    for name in registry():
        located = locate(name)
        if located is not None and located.resolve() == p.resolve():
            return name
    return None


# ---- what a stage used ----------------------------------------------------------------------------------------
_RECORDINGS: list[dict[str, Path | None]] = []


@contextmanager
def recording() -> Iterator[dict[str, Path | None]]:
    """Collect the entries the block resolves (`require`/`resolve`): name -> file, None for a random stand-in."""
    used: dict[str, Path | None] = {}
    _RECORDINGS.append(used)
    try:
        yield used
    finally:
        _RECORDINGS.remove(used)


def _note_use(name: str, path: Path | None) -> None:
    for used in _RECORDINGS:
        if path is not None or name not in used:  # a file that was used outranks a stand-in of it
            used[name] = path


def provenance(name: str, path: Path | None) -> dict[str, str]:
    """What a run that used the entry logs of it: "revision" (the hub commit it was fetched at, from its source
    record; a fixed-URL file: its URL) and "sha256" (a folder: file=sha256 per file), or that it was a stand-in."""
    if path is None:
        return {"revision": "random stand-in (no file: seeded random weights)", "sha256": "none (random stand-in)"}
    e = entry(name)
    record = ckpt.read_source_record(path) or {}
    if record.get("commit"):
        revision = record["commit"]
    elif e.hub_repo:
        revision = f"unknown: no source record (placed by hand, not fetched); {e.hub_repo} is " + (
            f"pinned to {e.revision}" if e.revision else "not pinned"
        )
    else:
        revision = record.get("url") or e.url
    if e.is_folder:
        digest = ";".join(f"{f}={ckpt.file_sha256(Path(path) / f)}" for f in e.hub_files)
    else:
        digest = ckpt.file_sha256(path)
    return {"revision": revision, "sha256": digest}


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
    """Download the entry into the cache (no-op when present and verified), hub files at the pinned revision, and
    write its source record; MissingWeightsError when offline."""
    e = entry(name)
    if locate(name) is not None and verify(name):
        return locate(name)
    if ckpt.offline():
        raise MissingWeightsError.for_entry(name, f"offline mode: {ENV_OFFLINE} is set")
    if e.is_folder:
        try:
            ckpt.hub_fetch(e.hub_repo, e.revision, cache_dir(), e.hub_files)
        except FileNotFoundError as err:
            raise MissingWeightsError.for_entry(name, str(err)) from None
    else:
        try:
            commit = ckpt.hub_commit(e.hub_repo, e.revision) if e.hub_repo else None
        except Exception as err:  # offline, unknown repo, auth
            reason = f"could not resolve {e.hub_repo}@{e.revision or 'main'}: {type(err).__name__}: {err}; offline?"
            raise MissingWeightsError.for_entry(name, reason) from None
        for rel, url in e.downloads(commit):
            try:
                _download(url, cache_dir() / rel, timeout)
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                reason = f"download of {url} failed: {type(err).__name__}: {err}; offline?"
                raise MissingWeightsError.for_entry(name, reason) from None
        source = dict(repo=e.hub_repo, revision=e.revision, commit=commit) if e.hub_repo else {}
        ckpt.write_source_record(path_of(name), url=url, **source)
    if not verify(name):
        raise RuntimeError(
            f"downloaded {name!r} to {path_of(name)} but it fails verification "
            f"({e.hash_kind}: {e.hash_note}); delete it and retry, or check the source {e.url}"
        )
    return path_of(name)


# ---- checks ------------------------------------------------------------------------------------------------
def sha256_of(path: Path) -> str:
    """sha256 of a file (once per process for each version of it)."""
    return ckpt.file_sha256(path)


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
            net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
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
    """True when the file is present, matches its source record if it has one (and the pinned commit) and passes
    its check (see hash_kind / hash_note); False otherwise."""
    e = entry(name)
    p = locate(name)
    if p is None:
        return False
    try:
        ckpt.check_source(p, e.revision)  # not the file that was fetched, or not the pinned commit
    except ckpt.CheckpointError:
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
            "structure" if e.structure else "readable"
        )
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
        commit = (ckpt.read_source_record(p) or {}).get("commit")
        fetched = f"  commit={commit}" if commit else ""
        print(f"{n}: {'OK' if ok else 'FAILED'} ({e.hash_kind}; {e.hash_note or 'full sha256'}){digest}{fetched}")
    return 1 if bad else 0


def pin(names: list[str]) -> dict[str, str]:
    """Write into the pin file (models/hub_revisions.json) the commits the present, verified hub files of `names`
    were fetched at (their source records); returns repo -> commit of what it pinned."""
    global _REGISTRY
    pins_file = variants.PINS_FILE
    data = json.loads(pins_file.read_text()) if pins_file.is_file() else {}
    pinned = {}
    for n in names:
        e = entry(n)
        p = locate(n)
        commit = (ckpt.read_source_record(p) or {}).get("commit") if p is not None else None
        if e.hub_repo and commit and verify(n):
            pinned[e.hub_repo] = commit
    if pinned:
        atomic_write_json(pins_file, {**data, **pinned}, indent=2)
        _REGISTRY = None  # its entries carry the revisions
    return pinned


def _cli_pin(names: list[str]) -> int:
    pinned = pin(names)
    for n in names:
        e = entry(n)
        if e.hub_repo and e.hub_repo not in pinned:
            why = "missing" if locate(n) is None else "no verified source record (placed by hand? fetch it)"
            print(f"{n}: not pinned ({why})")
    for repo, commit in pinned.items():
        print(f"{repo}: {commit}")
    if pinned:
        print(f"\nwrote {variants.PINS_FILE}: commit it so that every checkout fetches these commits")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.weights", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["list", "fetch", "verify", "pin"])
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
    return {"list": _cli_list, "fetch": _cli_fetch, "verify": _cli_verify, "pin": _cli_pin}[args.command](names)


if __name__ == "__main__":
    sys.exit(main())
