"""The README and docs/ hold together: the README stays a five-minute read, every relative link in README.md and
docs/*.md reaches a file (and its heading, when the link names one), every repository path and test a page names
exists, and no file of the repository cites a file it does not hold or names one of this project's tracker issues
(the official TiTok repository's public issues may be cited as sources, named as such)."""

import re
from pathlib import Path

import pytest

from tests.test_self_contained import ROOT, project_files, text_of

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_LINES, MAX_WORDS, MAX_WIDTH = 150, 1500, 120

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
# a path the repository holds, in backticks: `bench/plan.py`, `tests/x.py::test_y` (placeholders such as <grid> skip)
REPO_PATH = re.compile(r"`((?:bench|models|reports|sweeps|tests|docs|scripts)/[\w./-]*)(?:::(\w+))?`")
GENERATED = ("reports/out/",)  # what the report writes: named by the pages, not held by the repository
# the official repository's issues are public sources; this project's tracker is not
ISSUE = re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE)
PUBLIC_BEFORE = re.compile(r"(official|reference)(\s+TiTok)?\s+repository(['\u2019]s)?(\s+public)?\s*$", re.IGNORECASE)
PUBLIC_AFTER = re.compile(
    r"^((,|\s+and)\s+#?\d+)*\s+(of|in)\s+the\s+(official|reference)(\s+TiTok)?\s+repository", re.IGNORECASE
)
# a docs page cited from anywhere, with the start of a section's heading when one is named: (docs/reference.md, Cost)
DOC_CITATION = re.compile(r"\bdocs/([\w-]+\.md)(?:, ([A-Za-z][\w -]*\w))?")
MISSING_FILES = {
    "the team's reference notes": re.compile(r"TITOK\.md"),
    "the shared folder beside a checkout": re.compile(r"\.\./shared\b"),
}


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.MULTILINE)}


def broken_links(path: Path) -> list[str]:
    """The page's relative links that reach no file, or no heading of the page they name."""
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        where = (path.parent / file).resolve() if file else path
        if not where.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(f"{target} (no heading #{anchor} in {where.name})")
    return broken


def missing_paths(path: Path) -> list[str]:
    missing = []
    for name, test in REPO_PATH.findall(path.read_text()):
        if name.startswith(GENERATED):
            continue
        where = ROOT / name
        if not where.exists():
            missing.append(f"{path.relative_to(ROOT)}: `{name}` does not exist")
        elif test and not re.search(rf"^\s*(async )?def {test}\(", where.read_text(), flags=re.MULTILINE):
            missing.append(f"{path.relative_to(ROOT)}: `{name}::{test}`: no such test")
    return missing


def missing_doc_citations(text: str) -> list[str]:
    """Citations of docs pages that do not exist, or of a section whose heading no heading of the page starts with."""
    missing = []
    for page, section in DOC_CITATION.findall(text):
        where = ROOT / "docs" / page
        if not where.exists():
            missing.append(f"docs/{page}")
        elif section and not any(h.startswith(slug(section)) for h in anchors(where)):
            missing.append(f"docs/{page}, {section}")
    return missing


def tracker_issues(text: str) -> list[str]:
    """The "issue N" mentions that are not named as the official repository's."""
    return [
        m.group(0)
        for m in ISSUE.finditer(text)
        if not PUBLIC_BEFORE.search(text[max(0, m.start() - 60) : m.start()])
        and not PUBLIC_AFTER.search(text[m.end() : m.end() + 80])
    ]


def test_the_readme_is_a_five_minute_read():
    lines = README.read_text().splitlines()
    words = len(README.read_text().split())
    wide = [f"line {i}: {len(line)} characters" for i, line in enumerate(lines, 1) if len(line) > MAX_WIDTH]
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; at most {MAX_LINES}: move detail to docs/"
    assert words <= MAX_WORDS, f"README.md has {words} words; at most {MAX_WORDS}: move detail to docs/"
    assert wide == [], f"README.md lines over {MAX_WIDTH} characters:\n" + "\n".join(wide)


def test_ci_runs_exactly_the_readmes_test_command():
    setup = ("#", "set ", "cd ")  # the script's own lines around the command
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(setup)]
    assert len(ci) == 1 and f"```bash\n{ci[0]}\n```" in README.read_text(), ci


def test_the_docs_pages_exist():
    names = {p.name for p in PAGES}
    assert {
        "reproduce.md",
        "evaluation.md",
        "training.md",
        "reliability.md",
        "speed.md",
        "weights.md",
        "architecture.md",
        "smoke.md",
        "measurements.md",
        "reference.md",
    } <= names


def test_every_command_of_the_cluster_path_names_the_test_that_runs_it():
    text = (ROOT / "docs" / "reproduce.md").read_text()
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    tested = re.compile(r"Tests?: .*`(tests/|\.ci/run)", re.DOTALL)
    untested = [s.splitlines()[0] for s in sections if "```bash" in s and not tested.search(s)]
    assert untested == [], "docs/reproduce.md sections with commands but no test named: " + ", ".join(untested)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_path_and_test_a_page_names_exists(page):
    assert missing_paths(page) == []


def test_no_file_cites_a_missing_file_or_a_tracker_issue():
    here = Path(__file__).resolve()  # the patterns and their examples live here
    found = []
    for path in project_files():
        text = text_of(path)
        if text is None or path == here:
            continue
        for what, pattern in MISSING_FILES.items():
            found += [f"{path.relative_to(ROOT)}: {m.group(0)!r} ({what})" for m in pattern.finditer(text)]
        found += [f"{path.relative_to(ROOT)}: {hit!r} (this project's tracker)" for hit in tracker_issues(text)]
        found += [f"{path.relative_to(ROOT)}: {hit!r} (no such page or section)" for hit in missing_doc_citations(text)]
    assert found == [], "cite the public source (docs/reference.md says which) instead:\n" + "\n".join(found)


def test_the_rules_catch_what_they_are_for(tmp_path):
    # examples assembled here so that this file's own text holds none (the scan above skips it anyway)
    word = "issue"
    catches = [
        f"the target of {word} 10",
        f"({word} 13, item 10)",
        f"{word.title()} 10's report",
        f"{word}s 11",
        f"titok-bench {word} #9",
        f"{word} 10 of the plan",
    ]
    passes = [
        f"the official repository's {word} #76",
        f"the reference repository's {word}s #72",
        f"(official TiTok repository's {word} #82)",
        f"({word}s #1 and #5 of the official repository)",
        f"{word} #2 of the official repository",
        "an issue of the store",
        "issued 3 times",
    ]
    assert all(tracker_issues(text) for text in catches)
    assert not any(tracker_issues(text) for text in passes)
    assert slug("Set-up: two `commands`") == "set-up-two-commands"
    assert missing_doc_citations("(docs/reference.md, Stage 2), docs/smoke.md") == []
    assert missing_doc_citations("(docs/reference.md, Stage 9) docs/nope.md") == [
        "docs/reference.md, Stage 9",
        "docs/nope.md",
    ]
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n[a](#top) [b](#nope) [c](missing.md) [d](https://example.org/x)\n"
        "```\n# not a heading\n```\n[e](#not-a-heading)\n"
    )
    assert [b.split(" (")[0] for b in broken_links(page)] == ["#nope", "missing.md", "#not-a-heading"]
