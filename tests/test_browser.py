"""End to end in a real browser: `stride app`, start a run from the Setup page with the built-in model and the
ci preset, wait for it, and read the rankings on the Influence explorer. Screenshots go to
test-output/screenshots/."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser_helpers as bh  # noqa: E402

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"
RUN_TIMEOUT_S = 900


def _engine_available() -> bool:
    res = subprocess.run([sys.executable, "-m", "stride_core.cli", "run", "--help"], capture_output=True, timeout=120)
    return res.returncode == 0


@pytest.fixture(scope="module")
def browser_ready():
    if not Path(bh.CHROMIUM).exists():
        pytest.skip(f"{bh.CHROMIUM} is missing: apt-get install -y chromium chromium-driver")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    if not _engine_available():
        pytest.skip("engine not available (`stride run --help` fails)")


def test_start_run_in_the_browser_and_read_rankings(browser_ready, pydocs_ws, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ws, _model_dir = pydocs_ws  # default corpus + built-in ci model, shared with the other tests
    SHOTS.mkdir(parents=True, exist_ok=True)
    port = bh.free_port()
    base = f"http://127.0.0.1:{port}"
    app = bh.start_app(ws.root, port, tmp_path / "app.log", ["--no-demo"])
    run_name = f"browser-{int(time.time())}"
    try:
        bh.wait_healthy(base, app)
        with sync_playwright() as pw:
            browser = bh.launch_browser(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(30_000)

            # Setup: built-in model (the default choice), ci preset, two typed prompts.
            page.goto(base)
            bh.wait_idle(page)
            expect(page.get_by_role("heading", name="Set up a STRIDE run")).to_be_visible()
            page.get_by_text("Built-in tiny model (trained on pydocs)").click()
            page.get_by_text("Type them").click()
            box = page.get_by_role("textbox", name="One prompt per line")
            box.fill("To serialize a Python dictionary as a JSON string, you can call\n"
                     "The logging module lets an application record messages at different levels, such as")
            box.press("Control+Enter")
            expect(page.get_by_text("2 prompt(s).", exact=False)).to_be_visible()
            page.get_by_role("radiogroup", name=re.compile("Preset")).get_by_text("ci", exact=True).click()
            name_box = page.get_by_role("textbox", name="Run name")
            name_box.fill(run_name)
            name_box.press("Enter")
            bh.wait_idle(page)
            expect(page.get_by_text("Built-in model (ci preset)", exact=False)).to_be_visible()
            page.screenshot(path=str(SHOTS / "browser_setup.png"))
            page.get_by_role("button", name="Start run").click()

            # Runs: the job shows up with live progress, then finishes.
            expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible(timeout=30_000)
            expect(page.get_by_text(run_name).first).to_be_visible()
            page.screenshot(path=str(SHOTS / "browser_runs_live.png"))
            status_file = ws.run_dir(run_name) / "status.json"
            deadline = time.monotonic() + RUN_TIMEOUT_S
            state = None
            while time.monotonic() < deadline:
                state = json.loads(status_file.read_text())["state"] if status_file.exists() else None
                if state in ("done", "failed", "cancelled"):
                    break
                time.sleep(2)
            log = (ws.run_dir(run_name) / "job.log")
            assert state == "done", f"run ended as {state}; job.log:\n{log.read_text()[-3000:] if log.exists() else ''}"
            page.goto(f"{base}/runs")
            bh.wait_idle(page)
            page.screenshot(path=str(SHOTS / "browser_runs_done.png"))

            # Influence explorer: rankings of the new run.
            page.goto(f"{base}/influence")
            bh.wait_idle(page, settle=2.0)
            expect(page.get_by_role("heading", name="Influence explorer")).to_be_visible()
            expect(page.get_by_role("combobox", name="Run")).to_have_value(re.compile(rf"^{run_name} — started"))
            expect(page.get_by_role("heading", name=re.compile("Helpful"))).to_be_visible()
            expect(page.get_by_text("Scores are in loss units", exact=False)).to_be_visible()
            assert page.locator('[data-testid="stDataFrame"]').count() >= 1
            expect(page.get_by_role("combobox", name="Inspect")).to_have_value(re.compile(r"^(helpful|harmful) #1 · doc \d+"))
            page.screenshot(path=str(SHOTS / "browser_influence.png"))
            browser.close()
    finally:
        bh.stop_app(app)
        try:
            from stride_core import jobs

            jobs.cancel_job(ws, run_name, grace_s=2.0)
        except Exception:
            pass
