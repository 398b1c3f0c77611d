"""A real headless Chromium for the tests that check HTML pages (Data Docs, plots, dashboards, the metrics page).

Chromium comes from Debian (``make system-deps``). ``screenshot`` loads a page, waits for its scripts, writes a PNG
and returns the DOM as the browser rendered it (``--dump-dom``), so a test can assert on what a reader would see,
not on the HTML that was sent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["chromium", "rendered_dom", "screenshot"]

FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--no-first-run",
    "--virtual-time-budget=8000",  # let the page's scripts (plotly, the dashboard's SPA) run before capture
)


def chromium() -> str:
    """The Chromium binary; a missing one fails the test with the remedy (never a skip)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise AssertionError("Chromium is not installed: run `make system-deps` (Debian package `chromium`).")
    return found


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), *FLAGS, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def screenshot(url: str, out: Path, width: int = 1280, height: int = 900, timeout: float = 90) -> Path:
    """Load ``url`` in headless Chromium and write a PNG of the window to ``out``; fails if none was written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    done = _run([f"--screenshot={out}", f"--window-size={width},{height}", url], timeout)
    if not out.exists() or out.stat().st_size < 1000:
        raise AssertionError(f"Chromium wrote no screenshot of {url}: {done.stderr[-2000:]}")
    return out


def rendered_dom(url: str, timeout: float = 90) -> str:
    """The page's DOM after its scripts ran, as Chromium serialises it."""
    done = _run(["--dump-dom", url], timeout)
    if done.returncode != 0 or not done.stdout.strip():
        raise AssertionError(f"Chromium could not render {url}: {done.stderr[-2000:]}")
    return done.stdout
