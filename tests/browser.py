"""Headless Debian chromium driven by its chromedriver (selenium): open a page, collect console errors, count drawn chart points, screenshot."""

from __future__ import annotations

import functools
import http.server
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Where screenshots go (git-ignored): kept after the run for a person to look at.
ARTIFACTS = Path(__file__).resolve().parents[1] / ".bankde-artifacts"

# Per plotly chart: its title and how many marks (bar, marker, line segment) it drew in SVG,
# or on a canvas with pixels set. A chart with no data draws none.
_COUNT_MARKS = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(function (div) {
  var title = div.querySelector('.gtitle');
  var marks = 0;
  div.querySelectorAll('.barlayer path, .scatterlayer path, .boxlayer path').forEach(function (p) {
    var d = p.getAttribute('d');
    if (d && d !== 'M0,0Z' && !/^M[-0-9.,e ]*Z?$/.test(d)) { marks += 1; }
  });
  var canvases = 0;
  div.querySelectorAll('canvas').forEach(function (c) {
    if (c.width > 0 && c.height > 0) { canvases += 1; }
  });
  var box = div.getBoundingClientRect();
  return {id: div.id, title: title ? title.textContent : '', marks: marks,
          canvases: canvases, width: box.width, height: box.height,
          traces: (div.data || []).length};
});
"""


@dataclass
class Chart:
    id: str
    title: str
    marks: int
    width: float
    height: float
    traces: int


def require_chromium() -> None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(
                f"{path} missing: apt-get install chromium chromium-driver (.ci/run installs them)"
            )


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless chromium with a fresh profile; console messages kept for get_log('browser')."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    require_chromium()
    profile = tempfile.mkdtemp(prefix="bankde-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(120)
        driver.set_script_timeout(60)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: Any) -> list[str]:
    """Console messages of level SEVERE (errors, failed loads) since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def charts(driver: Any) -> list[Chart]:
    return [
        Chart(c["id"], c["title"], c["marks"] + c["canvases"], c["width"], c["height"], c["traces"])
        for c in driver.execute_script(_COUNT_MARKS)
    ]


def full_page_screenshot(driver: Any, path: Path, width: int = 1280) -> Path:
    """The whole page at `width` px as one PNG."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, min(max(height + 140, 800), 16000))
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """A static HTTP server on loopback for `root` (dbt docs fetch their JSON); yields its URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
