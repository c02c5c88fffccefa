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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers
import browser_helpers as bh  # noqa: E402

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
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
            # one view at a time below the tables (issue 17): the cross-prompt view of this real run on request
            expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(1)
            page.get_by_test_id("stButtonGroup").get_by_text("Across prompts", exact=True).click()
            bh.wait_idle(page)
            caption = page.get_by_text("Documents that rank for many different prompts", exact=False)
            expect(caption).to_be_visible()
            caption.scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / "browser_influence_across_prompts.png"))
            browser.close()
    finally:
        bh.stop_app(app)
        try:
            from stride_core.runs import jobs

            jobs.cancel_job(ws, run_name, grace_s=2.0)
        except Exception:
            pass


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name))


def test_first_launch_shows_the_model_training_progress(browser_ready, tmp_path):
    """`stride app` on a fresh workspace: the demo job builds the corpus and trains the built-in model; the Runs
    page shows that stage by name with a fraction and an ETA (not 'prepare 0%'). The job is cancelled then."""
    from playwright.sync_api import expect, sync_playwright

    from stride_core.runs import jobs
    from stride_core.store.workspace import Workspace

    ws = Workspace(tmp_path / "fresh")
    port = bh.free_port()
    base = f"http://127.0.0.1:{port}"
    app = bh.start_app(ws.root, port, tmp_path / "app.log", ["--demo-preset", "default", "--device", "cpu"])
    try:
        bh.wait_healthy(base, app)
        status_file = ws.run_dir("demo") / "status.json"
        deadline = time.monotonic() + 300
        st = {}
        while time.monotonic() < deadline:  # until the training has made measurable progress (an ETA exists)
            st = json.loads(status_file.read_text()) if status_file.exists() else {}
            if st.get("stage") == "train model" and st.get("progress", 0) >= 0.03 or st.get("state") in ("done", "failed"):
                break
            time.sleep(1)
        assert st.get("stage") == "train model", st
        assert "build corpus" in st["durations"]  # the corpus build was a stage of its own
        with sync_playwright() as pw:
            browser, page = bh.open_page(pw, f"{base}/runs", height=1000)
            expect(page.get_by_text(re.compile(r"stage train model — [1-9]\d*%")).first).to_be_visible()
            eta = page.locator('[data-testid="stMetric"]').filter(has_text="Stage ETA")
            expect(eta).to_contain_text(re.compile(r"\d+(s|m)"))
            expect(page.get_by_text(re.compile(r"step \d+ of \d+")).first).to_be_visible()
            _shot(page, "browser_first_launch_training.png")
            browser.close()
    finally:
        bh.stop_app(app)
        jobs.cancel_job(ws, "demo", grace_s=2.0)


@pytest.fixture
def small_app(browser_ready, tmp_path):
    """`stride app` over a workspace with two small corpora, a finished (hand-made) run and a model folder that
    records training on 20 of the 30 documents of corpus 'tiny'."""
    from dashboard_fixtures import make_corpus, make_run

    from stride_core.store.corpus import ImportOptions, import_corpus
    from stride_core.store.workspace import Workspace

    ws = Workspace(tmp_path / "ws").ensure()
    make_corpus(ws, tmp_path, "tiny", n=30)
    src = tmp_path / "another.jsonl"
    src.write_text("".join(json.dumps({"text": f"another document {i} with a few words"}) + "\n" for i in range(12)))
    import_corpus(ws, src, "another", ImportOptions())
    make_run(ws, "r-done", "done", attributions=True, audits=True)
    model = tmp_path / "m-tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (model / "model.safetensors").write_bytes(b"")  # validated by the Setup page, never loaded here
    (model / "stride_training.json").write_text(json.dumps({"corpus": "tiny", "n_used_docs": 20, "n_corpus_docs": 30}))
    port = bh.free_port()
    app = bh.start_app(ws.root, port, tmp_path / "app.log", ["--no-demo"])
    base = f"http://127.0.0.1:{port}"
    try:
        bh.wait_healthy(base, app)
        yield base, ws, model
    finally:
        bh.stop_app(app)


def test_setup_pairing_warning_and_corpus_default_in_the_browser(small_app):
    from playwright.sync_api import expect, sync_playwright

    base, _ws, model = small_app
    with sync_playwright() as pw:
        browser, page = bh.open_page(pw, base, height=1400)
        page.get_by_text("Local Hugging Face folder").click()
        box = page.get_by_role("textbox", name="Model folder")
        box.fill(str(model))
        box.press("Enter")
        bh.wait_idle(page)
        expect(page.get_by_text("trained on corpus tiny (20 documents)", exact=False)).to_be_visible()
        expect(page.get_by_role("combobox", name="Corpus")).to_have_value(re.compile(r"^tiny — 30 documents"))
        warning = page.get_by_text("trained on only the first 20 of the 30 documents of corpus 'tiny'", exact=False)
        expect(warning).to_be_visible()
        warning.scroll_into_view_if_needed()
        _shot(page, "browser_setup_pairing.png")
        browser.close()


def test_audit_paste_shows_the_item_count_in_the_browser(small_app):
    from playwright.sync_api import expect, sync_playwright

    base, _ws, _model = small_app
    with sync_playwright() as pw:
        browser, page = bh.open_page(pw, f"{base}/contamination", height=1400)
        page.get_by_text("Run a contamination audit").click()
        area = page.get_by_role("textbox", name=re.compile("paste benchmark items, separated by a blank line"))
        area.fill("First copied document, line one\nline two of the same document\n\n"
                  "Second document\nwith two lines\n\nA single sentence.")
        area.press("Control+Enter")
        bh.wait_idle(page)
        expect(page.get_by_text("3 item(s) parsed, separated by a blank line (auto-detected)", exact=False)).to_be_visible()
        page.get_by_role("radiogroup", name="Pasted text is").get_by_text("One per line", exact=True).click()
        bh.wait_idle(page)
        expect(page.get_by_text("5 item(s) parsed, one per line", exact=False)).to_be_visible()
        _shot(page, "browser_audit_paste.png")
        browser.close()


def test_influence_tables_then_one_view_at_a_time_in_the_browser(small_app):
    """The helpful / harmful tables draw with only the ranking chart beside them; the other views (the cross-prompt
    table and heatmap, the score histograms, the generic component) are drawn when chosen (issue 17)."""
    from playwright.sync_api import expect, sync_playwright

    base, _ws, _model = small_app
    with sync_playwright() as pw:
        browser, page = bh.open_page(pw, f"{base}/influence", height=1600)
        expect(page.get_by_role("heading", name=re.compile("Helpful"))).to_be_visible()
        expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(2)  # helpful and harmful only
        expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(1)
        page.get_by_test_id("stButtonGroup").get_by_text("Across prompts", exact=True).click()
        bh.wait_idle(page)
        expect(page.get_by_text("Documents that rank for many different prompts", exact=False)).to_be_visible()
        expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(3)  # + the recurring documents
        page.get_by_text("Documents that rank for many different prompts", exact=False).scroll_into_view_if_needed()
        _shot(page, "browser_influence_views.png")
        browser.close()
