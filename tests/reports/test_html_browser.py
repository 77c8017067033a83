"""index.html in headless Chromium: the figures really render (screenshot pixels in the S/B/L colours, every
<img> decoded with a nonzero natural size), and a smoke report shows its red banner.

    .venv/bin/nox -s browser        # installs Debian's chromium when missing, then runs these tests
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from reports import build_report
from reports.figures import PANELS, SIZE_STYLE, SMOKE_COLOR
from tests.infra.apt import ensure
from tests.reports.test_reports import Store, scaling_metrics

pytestmark = pytest.mark.browser

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GRID = {"sizes": ["S", "B", "L"], "num_tokens": [16, 32, 64, 128]}


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Two reports from one store: a comparable grid (named latent_vs_size: paper lines) and a smoke grid."""
    ensure(["chromium"])
    tmp = tmp_path_factory.mktemp("browser")
    store = Store(tmp / "mlflow.db")
    out = {}
    for grid, preset, samples in (("latent_vs_size", "paper", 50_000), ("smoke_grid", "tiny", 64)):
        exp, parent = store.sweep(grid, preset)
        for size in GRID["sizes"]:
            for k in GRID["num_tokens"]:
                store.cell(exp, parent, grid, f"TiTok-{size}-{k}", scaling_metrics(size, k, samples), preset=preset)
        out[grid] = build_report({"name": grid, **GRID}, store.uri, tmp / grid).html
    return out


def _chromium(tmp_path, page, *args: str) -> str:
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    cmd = [exe, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args, page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def _screenshot(tmp_path, page) -> np.ndarray:
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1400,3000")
    return np.asarray(Image.open(shot).convert("RGB")).astype(int)


def _pixels_near(rgb: np.ndarray, hex_color: str, tol: int = 30) -> int:
    target = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).sum(axis=-1) < tol).sum())


def test_screenshot_shows_the_figures(pages, tmp_path):
    rgb = _screenshot(tmp_path, pages["latent_vs_size"])
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 500  # not a blank or text-only page
    for size, (color, _) in SIZE_STYLE.items():
        assert _pixels_near(rgb, color) > 500, f"no {size} line colour {color} in the screenshot"
    assert _pixels_near(rgb, SMOKE_COLOR) < 50  # no smoke banner


def test_images_decode_with_nonzero_size(pages, tmp_path):
    dom = _chromium(tmp_path, pages["latent_vs_size"], "--dump-dom")
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == len(PANELS) + 1
    for img in images:
        w = re.search(r'data-natural-width="(\d+)"', img)
        h = re.search(r'data-natural-height="(\d+)"', img)
        assert w and h and int(w.group(1)) > 300 and int(h.group(1)) > 200, img[-200:]
    assert f'data-images-loaded="{len(images)}/{len(images)}"' in dom


def test_smoke_page_shows_its_banner(pages, tmp_path):
    rgb = _screenshot(tmp_path, pages["smoke_grid"])
    assert _pixels_near(rgb, SMOKE_COLOR) > 2_000  # the red banner and headline
    assert _pixels_near(rgb, SIZE_STYLE["B"][0]) > 500
