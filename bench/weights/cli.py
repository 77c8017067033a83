"""`python -m bench.weights list|fetch|verify|pin [names]`: the registry's files, present or missing, fetched,
verified and pinned (default: every entry; fetch needs at least one)."""

from __future__ import annotations

import sys

from models import hub, source_records, variants

from .checks import sha256_of, verify
from .download import fetch
from .entries import entry, registry
from .pins import pin
from .resolution import MissingWeightsError, cache_dir, locate, path_of

DESCRIPTION = "The registry of pretrained files: what each is, where it comes from, where it lives, how it is checked."


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
    print(f"\ncache: {cache_dir()}  (${hub.ENV_CACHE}); fetch with: python -m bench.weights fetch <name>")
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
        commit = (source_records.read_source_record(p) or {}).get("commit")
        fetched = f"  commit={commit}" if commit else ""
        print(f"{n}: {'OK' if ok else 'FAILED'} ({e.hash_kind}; {e.hash_note or 'full sha256'}){digest}{fetched}")
    return 1 if bad else 0


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

    ap = argparse.ArgumentParser(prog="python -m bench.weights", description=DESCRIPTION)
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
