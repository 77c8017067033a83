"""The registry of pretrained files: what each is, where it comes from, where it lives, how it is checked.

    python -m bench.weights list                   # every entry: present / missing, cache path
    python -m bench.weights fetch inception-fid    # download into the cache (needs internet)
    python -m bench.weights verify                 # check the files that are present
    python -m bench.weights pin                    # write the commits of the hub files present into the pin file

Cache folder: $TITOK_BENCH_WEIGHTS, default ~/.cache/titok-bench/weights, the one cache of the project (models.hub
owns its location and the hub fetch; models.from_pretrained(name) reads the same hub/ folders). The benchmark never
downloads: `require`/`resolve` only look in the cache and say exactly which file to place where. Two explicit front
doors download: `fetch` here and models.from_pretrained(name or hub repo id), the zoo's (short timeouts, never
hang); TITOK_BENCH_OFFLINE=1 turns both off. Pins, source records and checks: docs/weights.md.

    entries     the registry: every entry, its source and its check
    resolution  where an entry's file lives; `require` / `resolve` for the stages
    usage       which entries a stage used and what it logs of them (`recording`, `provenance`)
    checks      `verify`: the source record, then the hash or structure of the file
    download    `fetch`: download into the cache and write the source record
    pins        `pin`: the commits of the fetched hub files into models/hub_revisions.json
    cli         `python -m bench.weights`
"""

from models.hub import ENV_CACHE, ENV_OFFLINE

from .checks import verify
from .download import fetch
from .entries import (
    ADM_REFERENCE_256,
    CONVNEXT_SMALL,
    INCEPTION,
    LPIPS_VGG,
    TEACHER,
    TITOK_REPO,
    VGG16,
    Entry,
    entry,
    registry,
)
from .pins import pin
from .resolution import (
    MissingWeightsError,
    Resolved,
    cache_dir,
    locate,
    name_of,
    path_of,
    require,
    resolve,
    standin_path,
)
from .usage import provenance, recording

__all__ = [
    "ENV_CACHE",
    "ENV_OFFLINE",
    "ADM_REFERENCE_256",
    "CONVNEXT_SMALL",
    "INCEPTION",
    "LPIPS_VGG",
    "TEACHER",
    "TITOK_REPO",
    "VGG16",
    "Entry",
    "entry",
    "registry",
    "MissingWeightsError",
    "Resolved",
    "cache_dir",
    "locate",
    "name_of",
    "path_of",
    "require",
    "resolve",
    "standin_path",
    "recording",
    "provenance",
    "verify",
    "fetch",
    "pin",
]
