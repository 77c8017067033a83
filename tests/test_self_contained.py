"""The repository refers to nothing outside itself: no file reaches for the team's shared folder beside a
checkout, and none names a path of a development machine. (The suite itself runs from an isolated copy of the
checkout, see noxfile.py, so a reference that slipped past these patterns fails there too.)"""

import re
from pathlib import Path

from bench.launch.snapshot import tracked_files

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "the shared folder beside a checkout": re.compile(
        r"\.\./shared\b|\bshared/(reference|notes|hooks)\b|"
        r"/\s*[\"']shared[\"']"
    ),
    "a path of a development machine": re.compile(r"(?<![\w.~-])/(work|home|root|Users|mnt|scratch)/"),
}


def project_files() -> list[Path]:
    here = Path(__file__).resolve()  # the patterns and their examples live here
    listed = tracked_files(ROOT, untracked=True)
    return [ROOT / name for name in listed if (ROOT / name).is_file() and ROOT / name != here]


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary (weights, images)
    return data.decode("utf-8", errors="replace")


def test_no_file_refers_outside_the_repository():
    files = project_files()
    assert {ROOT / "README.md", ROOT / "noxfile.py", ROOT / "tests" / "reference.py"} <= set(files)
    found = []
    for path in files:
        text = text_of(path)
        if text is None:
            continue
        for what, pattern in FORBIDDEN.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {match.group(0)!r} ({what})")
    assert found == [], "files that refer outside the repository:\n" + "\n".join(found)


def test_the_patterns_catch_what_they_are_for():
    # the examples are assembled here so that this file itself holds none of them (other tools scan for them too)
    up, shared, work = "..", "shared", "work"
    catches = [
        f'Path(__file__).parents[2].parent / "{shared}" / "reference"',
        f"see {up}/{shared}/notes/infra.md",
        f"settings follow {shared}/notes/infra.md",
        f"cd /{work}/main && make",
        "/home/alice/data",
    ]
    passes = [f"_{shared}/reference", "the shared stages run first", "~/.cache/titok-bench", "/tmp/x", f"a/{work}/b"]
    assert all(any(p.search(text) for p in FORBIDDEN.values()) for text in catches)
    assert not any(p.search(text) for p in FORBIDDEN.values() for text in passes)
