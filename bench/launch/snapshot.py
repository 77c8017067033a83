"""The code the jobs import: a copy of the checkout taken at submission (`snapshot_code`), put first on a job's
import path (`code_env`, `code_setup`), so a job that (re)starts later runs the code it was submitted with, not
the working tree as edited since. Also the one listing of the checkout's files (`tracked_files`), which the test
sessions' isolated copy (noxfile.py) and the self-containment test use too."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CODE_DIR = "code"  # <grid folder>/code/<code version>-<content hash>/
SNAPSHOT_SKIP = ("tests/",)  # the test suite and its reference data (parity weights): no job imports them
ROOT = Path(__file__).resolve().parents[2]  # the checkout (or snapshot) this process imports bench from


def tracked_files(root: str | os.PathLike = ROOT, untracked: bool = False) -> list[str]:
    """The git-tracked files of the checkout at `root` (paths relative to it, sorted, each once), with `untracked`
    also the untracked files git does not ignore. Files deleted in the working tree are still listed. Raises
    OSError or subprocess.SubprocessError where git cannot list `root` (no git, no checkout)."""
    args = ["git", "ls-files", "-z", "--cached"] + (["--others", "--exclude-standard"] if untracked else [])
    listed = subprocess.run(args, cwd=root, capture_output=True, timeout=60, check=True).stdout
    return sorted(set(filter(None, os.fsdecode(listed).split("\0"))))


def snapshot_code(dest: str | os.PathLike, root: str | os.PathLike | None = None) -> Path | None:
    """Copy the checkout's git-tracked files (but `SNAPSHOT_SKIP`) as the working tree holds them, a dirty tree's
    edits included, into `dest/<code version>-<content hash>/`, and return that folder: the code the sweep's jobs
    import, whenever they start or are requeued. Untracked files are not copied (`git add` a new module first);
    neither are .git, .venv or outputs. The same content gives the same folder, copied once: an existing one is
    reused; a new one is written into a temporary folder beside it and renamed, so a folder under its final name is
    complete. None where `root` is no git checkout (the jobs then import what the working tree holds)."""
    root = Path(root).resolve() if root else ROOT
    try:
        listed = tracked_files(root)
    except (OSError, subprocess.SubprocessError):
        return None
    files: dict[str, tuple[bytes | str, int]] = {}  # name -> (contents, mode), or (link target, 0) for a symlink
    digest = hashlib.sha256()
    for name in listed:
        path = root / name
        if name.startswith(SNAPSHOT_SKIP):
            continue
        if path.is_symlink():
            files[name] = (os.readlink(path), 0)
            digest.update(f"{name}\0link\0{files[name][0]}\0".encode())
        elif path.is_file():  # not a file deleted in the working tree, nor a submodule
            data, mode = path.read_bytes(), 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644
            files[name] = (data, mode)
            digest.update(f"{name}\0{mode:o}\0{len(data)}\0".encode() + data)
    if not files:
        return None  # a repository with nothing tracked yet
    final = Path(dest).resolve() / f"{code_version(root)}-{digest.hexdigest()[:12]}"
    if final.is_dir():
        return final  # this code, copied by an earlier sweep
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        for name, (data, mode) in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, str):
                os.symlink(data, target)
            else:
                target.write_bytes(data)
                target.chmod(mode)
        tmp.chmod(0o755)  # mkdtemp's folder is 0700
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise  # else another driver renamed the same snapshot into place first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def code_env(code: str | os.PathLike | None) -> dict[str, str]:
    """The environment that makes a job import `code`: first on PYTHONPATH, so ahead of the editable install (whose
    finder Python asks after sys.path), and the job's current folder off sys.path (PYTHONSAFEPATH, Python >= 3.11):
    `python -m submitit...` puts that folder first, and a driver started in the checkout would otherwise have its
    jobs import the working tree. A local job inherits it from the driver (`job_environment`)."""
    if not code:
        return {}
    return {
        "PYTHONPATH": os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONSAFEPATH": "1",
    }


def code_setup(code: str | os.PathLike | None) -> list[str]:
    """`code_env` as lines of a SLURM job's batch script, which a requeued job runs again."""
    if not code:
        return []
    return [f"export PYTHONPATH={shlex.quote(str(code))}${{PYTHONPATH:+:$PYTHONPATH}}", "export PYTHONSAFEPATH=1"]


@contextmanager
def job_environment(env: dict[str, str]) -> Iterator[None]:
    """`env` in os.environ meanwhile (the local executor starts a job with the driver's environment)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def report_code(code: str | None) -> set[Path]:
    """Say in the job's log where this process imports `bench` and `models` from (returned), with a warning when
    that is not the snapshot `code` it was submitted to import."""
    import models

    roots = {ROOT, Path(models.__file__).resolve().parents[1]}
    names = ", ".join(map(str, sorted(roots)))
    print(f"code: bench and models imported from {names}" + (f" (snapshot {code})" if code else ""), flush=True)
    if code and roots != {Path(code).resolve()}:
        print(
            f"warning: this job was submitted to import the code snapshot {code}, not {names}: it runs whatever "
            f"code is there now, which titok.code_version may not name (on Python < 3.11 a job's current folder "
            f"comes first on sys.path: start the sweep outside the checkout)",
            file=sys.stderr,
            flush=True,
        )
    return roots


def code_version(root: str | os.PathLike | None = None) -> str:
    """The checkout's commit, `-dirty` when a tracked file differs from it; "unknown" without git."""
    root = Path(root) if root else ROOT
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (sha or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
