"""Drive the dashboard in a real headless chromium (Debian's /usr/bin/chromium through playwright).

Used by tests/dashboard/test_browser.py, and runnable to refresh the README screenshots of a running app:

    python tests/browser_helpers.py http://127.0.0.1:8501 docs/screenshots
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("STRIDE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGES = {"setup": "", "runs": "runs", "influence": "influence", "contamination": "contamination",
         "selection": "selection"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(workspace: Path, port: int, log: Path, extra: list[str] | None = None) -> subprocess.Popen:
    """`stride app` in its own process group (kill with stop_app)."""
    cmd = [sys.executable, "-m", "stride_core.cli", "--workspace", str(workspace), "app", "--port", str(port),
           *(extra or [])]
    fh = open(log, "wb")
    return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`stride app` exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the dashboard at {base} did not become healthy in {timeout:.0f}s")


def stop_app(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def launch_browser(pw):
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def open_page(pw, url: str, width: int = 1400, height: int = 1400):
    """A headless browser showing `url` once the app is idle: (browser, page), 30 s per step."""
    browser = launch_browser(pw)
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(30_000)
    page.goto(url)
    wait_idle(page)
    return browser, page


def wait_idle(page, settle: float = 1.0, timeout: float = 30.0) -> None:
    """Wait until the Streamlit script run has finished (stApp's data-test-script-state), then settle."""
    page.wait_for_selector("h1", timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    app = page.locator('[data-testid="stApp"]')
    while time.monotonic() < deadline:
        if app.get_attribute("data-test-script-state") != "running":
            break
        time.sleep(0.2)
    time.sleep(settle)


def screenshot_pages(base: str, out_dir: Path, width: int = 1400, height: int = 2000,
                     pages: dict[str, str] | None = None) -> list[Path]:
    """One PNG per dashboard page. Streamlit scrolls inside its main block, so a tall viewport is used
    instead of a full-page capture."""
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with sync_playwright() as pw:
        browser = launch_browser(pw)
        page = browser.new_page(viewport={"width": width, "height": height})
        for name, url in (pages or PAGES).items():
            page.goto(f"{base}/{url}")
            wait_idle(page, settle=2.0)
            p = out_dir / f"{name}.png"
            page.screenshot(path=str(p))
            paths.append(p)
        browser.close()
    return paths


if __name__ == "__main__":
    for p in screenshot_pages(sys.argv[1].rstrip("/"), Path(sys.argv[2])):
        print(p)
