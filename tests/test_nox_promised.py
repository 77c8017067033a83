"""`nox -s slurm` and `nox -s browser` run tests the README promises CI runs: when their fixtures skip them (no root,
no SLURM), the session must fail under CI=true and end "skipped" with the reason elsewhere, never pass green. A real
nox runs a session built on noxfile.run_promised over a test that skips the way those fixtures do."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOXFILE = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import nox
from noxfile import run_promised

nox.options.sessions = ["promised"]  # not the project's sessions, which importing its noxfile registers

@nox.session(venv_backend="none")
def promised(session):
    run_promised(session, "browser")
"""
SKIPPING = """
import pytest

@pytest.mark.browser
def test_renders():
    pytest.skip("headless Chromium needs root: not running as root")
"""


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_skipped_promised_test_is_never_a_green_pass(tmp_path, ci):
    (tmp_path / "noxfile.py").write_text(NOXFILE)
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n  browser: needs headless Chromium\n")
    env = dict(os.environ, CI=ci)
    r = subprocess.run(
        [str(Path(sys.executable).with_name("nox")), "-f", "noxfile.py", "-s", "promised"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = r.stdout + r.stderr
    assert "1 promised browser test(s) did not run" in out and "not running as root" in out, out
    if ci:
        assert r.returncode != 0, out
    else:
        assert r.returncode == 0 and "Session promised skipped" in out, out
