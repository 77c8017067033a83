"""Where an entry's file lives in the cache, and the stages' way to get it: `require` (the file, checked against its
source record, or MissingWeightsError saying where to put it) and `resolve` (or a random stand-in where allowed).
Nothing here downloads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models import hub, source_records

from .entries import entry, registry
from .usage import note_use


def cache_dir() -> Path:
    """$TITOK_BENCH_WEIGHTS or ~/.cache/titok-bench/weights (read at every call: tests may change it)."""
    return hub.weights_cache_dir()


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
            f"  (the cache folder is ${hub.ENV_CACHE}, now {cache_dir()}; smoke runs may pass "
            "allow_random=True to use a random stand-in, tagged weights.random=true)"
        )
        return cls("\n".join(lines), name, path)


def require(name: str) -> Path:
    """The entry's file in the cache, checked against its source record (models.state_dicts.CheckpointError when
    it changed since it was fetched, or holds another commit than the pinned one); the use is recorded."""
    p = locate(name)
    if p is None:
        raise MissingWeightsError.for_entry(name)
    source_records.check_source(p, entry(name).revision)
    note_use(name, p)
    return p


@dataclass(frozen=True)
class Resolved:
    path: Path | None
    random: bool  # True: no file, the caller builds a seeded random stand-in and tags its numbers


def resolve(name: str, allow_random: bool) -> Resolved:
    """`require`, or with allow_random a missing file gives Resolved(None, True): a stand-in (recorded as one)."""
    if locate(name) is not None or not allow_random:
        return Resolved(require(name), False)
    note_use(name, None)
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
