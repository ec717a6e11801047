"""The marketer's view in a real browser: `nextbest train` twice, `nextbest ui` (a real `mlflow
server` on the project's SQLite store), then headless Chromium (Debian's, driven by Playwright)
opens the pages `nextbest ui` prints, as a marketer would.

Screenshots go to ``test-output/mlflow_ui/`` (``NEXTBEST_TEST_OUTPUT`` moves it).
"""

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OUTPUT = Path(os.environ.get("NEXTBEST_TEST_OUTPUT", REPO / "test-output")) / "mlflow_ui"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# MLflow's UI opens its assistant panel on a first visit (a returning user closed it). The view is
# NOT preset: a first visit would land in the GenAI view, and the links `nextbest ui` prints must
# open the model-training one by themselves
FIRST_VISIT_DONE = """try { if (location.protocol.startsWith('http')) {
  localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
  localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false'); } } catch (e) {}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Two trained versions (the first is the champion) in a fresh project directory, via the CLI."""
    home = tmp_path_factory.mktemp("project")
    env = {**os.environ, "NEXTBEST_HOME": str(home), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        env.pop(key, None)
    nextbest = str(BIN / "nextbest")
    for cmd in (["data", "generate", "--customers", "800", "--days", "30", "--seed", "5", "--out", "data"],
                ["train", "data", "--promote"], ["train", "data", "--seed", "1"]):
        subprocess.run([nextbest, "-q", *cmd], cwd=home, env=env, check=True, capture_output=True)
    return home, env


@pytest.fixture(scope="module")
def links(project):
    """Start `nextbest ui` and read the pages it prints (label -> URL)."""
    from nextbest.cli_serve import stop_tree

    home, env = project
    errors = open(home / "ui.log", "w")  # the server's log, shown if it does not come up
    proc = subprocess.Popen([str(BIN / "nextbest"), "-q", "ui", "--port", str(_free_port())], cwd=home, env=env,
                            stdout=subprocess.PIPE, stderr=errors, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    found, deadline = {}, time.time() + 180
    try:
        while time.time() < deadline and not any("side by side" in k for k in found):
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, f"nextbest ui exited with {proc.returncode}: " + \
                    (home / "ui.log").read_text()[-3000:]
                continue
            match = re.match(r"\s+(.+?): (http\S+)$", line.rstrip())
            if match:
                found[match.group(1)] = match.group(2)
        assert any("side by side" in k for k in found), f"nextbest ui printed {found}: " + \
            (home / "ui.log").read_text()[-3000:]
        yield found
    finally:
        stop_tree(proc.pid)
        errors.close()


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import expect, sync_playwright

    OUTPUT.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=30_000)  # the first page load fetches the UI's 27 MB bundle
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        context = browser.new_context(viewport={"width": 1400, "height": 1800})  # the UI scrolls inside itself
        context.add_init_script(FIRST_VISIT_DONE)
        yield context.new_page()
        browser.close()


def test_ui_prints_the_pages_to_open(links):
    assert set(links) == {"training run of version 1 (champion)", "uplift report of version 1 (champion)",
                          "training run of version 2 (newest)", "uplift report of version 2 (newest)",
                          "versions 1 and 2 side by side"}


def test_training_run_page_shows_the_version_and_headline_metrics(project, links, page):
    from mlflow import MlflowClient
    from playwright.sync_api import expect

    from nextbest.training import run_metrics

    home, _ = project
    url = links["training run of version 1 (champion)"]
    stored = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}").get_run(url.split("?")[0].rsplit("/", 1)[1]).data.metrics
    page.goto(url)
    expect(page.get_by_role("heading", name="nextbest v1")).to_be_visible()  # the run is named by its version
    # the model-training view (its sidebar: Runs, Models), not the GenAI view a first visit gets by default
    expect(page.get_by_text("Models", exact=True).first).to_be_visible()
    expect(page.get_by_text("Evaluation runs", exact=True)).to_have_count(0)
    expect(page.get_by_text("Sessions", exact=True)).to_have_count(0)
    # the off-policy headline leads the description, above where MLflow folds it ("Show more")
    headline = page.get_by_text("Extra profit per 1,000 customers per day", exact=False)
    expect(headline).to_be_visible()
    fold = page.get_by_text("Show more", exact=True)
    if fold.count():
        assert headline.bounding_box()["y"] + headline.bounding_box()["height"] <= fold.bounding_box()["y"]
    expect(page.get_by_text(f"Metrics ({len(stored)})")).to_be_visible()
    headline = [run_metrics.name(run_metrics.PROFIT, w) for w in ("policy", "suppress", "best_single_channel",
                                                                  "random", "oracle")]
    headline += [f"extra_orders_per_1000_messages/channel_email{end}" for end in ("", "_low_95", "_high_95")]
    for name in headline:
        row = page.get_by_role("row").filter(has=page.get_by_text(name, exact=True))
        expect(row).to_contain_text(repr(stored[name]))
    page.screenshot(path=OUTPUT / "training_run.png", full_page=True)


def test_uplift_report_renders_with_its_charts(links, page):
    from playwright.sync_api import expect

    page.goto(links["uplift report of version 1 (champion)"])
    report = page.frame_locator("iframe.mlflow-html-iframe")
    expect(report.locator("h1")).to_have_text("What messages add: uplift report")
    expect(report.get_by_text("Policy version 1 (MLflow run", exact=False)).to_be_visible()
    expect(report.get_by_text("What each channel, offer and send time adds over sending nothing")).to_be_visible()
    for chart in ("policy_value.png", "incremental_orders.png", "qini.png"):
        width = report.locator(f"img[alt='{chart}']").evaluate(
            "img => img.decode().then(() => img.naturalWidth, () => -1)")
        assert width > 300, f"{chart} did not load ({width})"
    page.screenshot(path=OUTPUT / "uplift_report.png", full_page=True)


def test_newest_report_shows_what_changed_against_the_champion(links, page):
    """Version 2 was trained with version 1 as champion: its report has the "what changed" table
    (by channel, offer and send time), in the browser as the marketer opens it."""
    from playwright.sync_api import expect

    page.goto(links["uplift report of version 2 (newest)"])
    report = page.frame_locator("iframe.mlflow-html-iframe")
    expect(report.get_by_text("What changed against the champion (version 1)")).to_be_visible()
    table = report.locator("h2:has-text('What changed') + p + table")
    for group in ("email", "sms", "push", "morning (6-11)"):
        expect(table.get_by_role("cell", name=group, exact=True)).to_be_visible()
    expect(table.get_by_role("columnheader", name="change in extra profit /1,000 customers")).to_be_visible()
    page.screenshot(path=OUTPUT / "what_changed.png", full_page=True)


def test_compare_view_puts_two_versions_side_by_side(links, page):
    from playwright.sync_api import expect

    page.goto(links["versions 1 and 2 side by side"])
    names = [page.get_by_text(f"nextbest v{v}", exact=True) for v in (1, 2)]
    for name in names:
        expect(name).to_be_visible()
    boxes = [name.bounding_box() for name in names]
    assert abs(boxes[0]["y"] - boxes[1]["y"]) < 20 and boxes[0]["x"] < boxes[1]["x"]  # one row, two columns
    metrics = page.locator(".du-bois-light-collapse-content-box").filter(
        has=page.get_by_role("switch", name="Metrics - Show diff only"))
    expect(metrics.get_by_text("extra_orders_per_1000_messages/channel_email", exact=True)).to_be_visible()
    page.screenshot(path=OUTPUT / "compare_versions.png", full_page=True)


def test_ui_refuses_a_busy_port_with_a_clear_message(project):
    home, env = project
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([str(BIN / "nextbest"), "-q", "ui", "--port", str(port)], cwd=home, env=env,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use (another MLflow UI?): pass --port" in proc.stderr


def test_ui_links_nothing_before_the_first_version(tmp_path, monkeypatch):
    from nextbest.cli_ui import run_links

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("NEXTBEST_HOME", str(tmp_path))
    assert run_links("http://127.0.0.1:5000") == []
