"""`dvc plots show/diff` pages work offline: the committed template (plots_template/template.html,
set in .dvc/config) inlines vega, vega-lite and vega-embed, and headless Chromium, with every
host name unresolvable, draws each plot declared in dvc.yaml from the tiny pipeline's outputs."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from dvc_repo import sh

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is missing (Debian: apt-get install chromium; .ci/run does)")
REMOTE_SCRIPT = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?\s*(https?:)?//", re.IGNORECASE)
CHART = re.compile(r"<svg\b[^>]*\bclass=\"marks\"", re.IGNORECASE)  # vega's SVG view: one per plot
DATA_MARK = re.compile(r"class=\"mark-\w+ role-mark[^\"]*\"[^>]*>\s*<(path|line|rect|circle)\b")


def declared_plots() -> list[str]:
    return [next(iter(p)) if isinstance(p, dict) else p
            for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]]


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={profile}",
           "--host-resolver-rules=MAP * ~NOTFOUND",  # no host resolves: a CDN would fail to load
           "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)


def test_template_is_configured_and_self_contained():
    template = ROOT / "plots_template/template.html"
    configured = sh(ROOT, "dvc", "config", "plots.html_template").stdout.strip()
    assert (ROOT / ".dvc" / configured).resolve() == template.resolve()
    html = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in html and "{scripts}" not in html  # DVC adds its CDN tags at {scripts}
    assert not REMOTE_SCRIPT.search(html)
    for name, major in (("vega", "5."), ("vega-lite", "5."), ("vega-embed", "6.")):
        assert re.search(rf"/\* {name} {re.escape(major)}\d+\.\d+ \*/", html), name
        assert "Redistribution and use in source and binary forms" in \
            (ROOT / f"plots_template/LICENSES/{name}.txt").read_text(), name  # BSD-3-Clause


@pytest.fixture(scope="module")
def page(tiny_pipeline, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plots")
    sh(tiny_pipeline, "dvc", "plots", "show", "--out", str(out / "show"))
    sh(tiny_pipeline, "dvc", "plots", "diff", "--out", str(out / "diff"))
    return out / "show/index.html"


def test_pages_load_no_remote_script(page):
    for html in (page, page.parent.parent / "diff/index.html"):
        text = html.read_text(encoding="utf-8")
        assert not REMOTE_SCRIPT.search(text), REMOTE_SCRIPT.search(text).group(0)
        assert text.count("vegaEmbed(") >= len(declared_plots())


@needs_chromium
def test_chromium_draws_every_plot(page, tmp_path):
    dom = chromium(tmp_path / "profile", "--dump-dom", page.as_uri()).stdout
    charts = CHART.split(dom)[1:]
    assert len(charts) == len(declared_plots()), (len(charts), declared_plots())
    for i, chart in enumerate(charts):
        assert DATA_MARK.search(chart.split("</svg>")[0]), f"plot {declared_plots()[i]} has no marks"
    for engine in ("fp32", "int8", "keras"):  # latency samples of every engine are drawn
        assert f"engine: {engine};" in dom, engine
    assert "name: conv2d1;" in dom  # per-layer SQNR points carry the layer name


@needs_chromium
def test_screenshot_is_not_blank(page, tmp_path):
    from PIL import Image

    shot = tmp_path / "plots.png"
    chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 16, "screenshot has (almost) one colour"
    white = sum(count for count, rgb in colours if rgb == (255, 255, 255))
    assert 1 - white / (1200 * 2000) > 0.02, "screenshot is (almost) all white"
