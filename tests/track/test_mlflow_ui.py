"""The MLflow UI in a real browser: two runs logged by the report stage's own function, then compared.

The runs are the committed reports, named after their method (COMMITTED), and a copy labelled
"orpo" with the key metric raised by 10 points: a fixture for the UI, not a measured ORPO result.

A real `mlflow server` serves a temporary sqlite store and Debian's Chromium (headless, driven by
Playwright) reads its pages. TUNELAB_SCREENSHOT=<path> instead serves a copy of the project's own
mlflow.db, compares its newest real runs of the default method and of ORPO (`make run`, then
`dvc exp run -S method=orpo`), and saves the comparison view there (`make screenshot` writes
docs/mlflow_compare.png for the README).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from stages.report import STAGES
from tests.conftest import free_port
from tunelab.core.config import read_params
from tunelab.core.io import read_json
from tunelab.track.tracking import TrackingSettings, log_pipeline_run, runs_table_url
from tunelab.track.ui import WORKFLOW_SETTING

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "tunelab"
KEY_METRIC = "evaluate.variants.aligned.ifeval.prompt_level_loose.mean"
COMMITTED = read_params(REPO / "params.yaml")["method"]  # the committed reports' method: the first run's name
assert COMMITTED != "orpo", "the second run is labelled orpo"

CHROMIUM = Path("/usr/bin/chromium")
# Playwright's own browser download is never used (`playwright install` needs the internet).
# Without the background-networking flags Chromium keeps dialling Google services, which the
# closed network refuses.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1000}
# Generous: on a busy 2-core machine the first page load (a large JS bundle) takes ~20 s.
SERVER_START_S = 180
UI_TIMEOUT_MS = 90_000
expect.set_options(timeout=UI_TIMEOUT_MS)


@dataclass
class Store:
    uri: str
    artifacts: Path
    experiment_id: str
    run_ids: dict[str, str]  # run name -> run id, in logging order (COMMITTED, orpo)
    key_metric: dict[str, float]  # run name -> KEY_METRIC's logged value
    real: bool = False  # the project's own runs (TUNELAB_SCREENSHOT), not the fixture's


def log_run(params: dict, reports: dict, run_name: str, root: Path) -> str:
    """The one call into the code under test: the report stage's MLflow logging, returning the run id."""
    os.environ["DVC_EXP_NAME"] = run_name  # as `dvc exp run -n <name>` sets it for the stages
    try:
        return log_pipeline_run(params, reports, {}, {"": [REPO / "reports" / "report.md"]},
                                TrackingSettings(experiment=EXPERIMENT), root=root)
    finally:
        del os.environ["DVC_EXP_NAME"]


def committed_inputs() -> tuple[dict, dict]:
    """params.yaml and the committed stage reports, exactly what `python -m stages.report` reads."""
    params = read_params(REPO / "params.yaml")
    reports = {name: read_json(REPO / "reports" / f"{name}.json") for name in STAGES}
    return params, reports


def as_orpo(params: dict, reports: dict) -> tuple[dict, dict]:
    """A second run that differs from the first in the method and in the key metric only."""
    params, reports = copy.deepcopy(params), copy.deepcopy(reports)
    params["method"] = "orpo"
    reports["align"]["method"] = "orpo"
    loose = reports["evaluate"]["variants"]["aligned"]["ifeval"]["prompt_level_loose"]
    loose["mean"] = round(min(1.0, (loose["mean"] or 0.0) + 0.1), 3)
    return params, reports


def key_metric_value(reports: dict) -> float:
    return reports["evaluate"]["variants"]["aligned"]["ifeval"]["prompt_level_loose"]["mean"]


def project_store(tmp: Path) -> Store:
    """A copy of the project's mlflow.db, with its newest finished pipeline run of COMMITTED and the
    newest ORPO run of the same seeds (so method is the one parameter that differs, as after
    `dvc exp run -S method=orpo`)."""
    import shutil

    from mlflow import MlflowClient

    source = REPO / "mlflow.db"
    if not source.is_file():
        pytest.fail(f"{source} does not exist: `make run` logs the default run first", pytrace=False)
    shutil.copy(source, tmp / "mlflow.db")  # the server never writes to the project's own store
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs, same_seeds = {}, ""
    for method in (COMMITTED, "orpo"):
        found = [] if experiment is None else client.search_runs(
            [experiment.experiment_id], f"params.method = '{method}' and attributes.status = 'FINISHED'{same_seeds}",
            order_by=["attributes.start_time DESC"], max_results=1)
        if not found:
            seeds = " with the default run's seeds" if same_seeds else ""
            pytest.fail(f"{source} holds no finished {method} run{seeds}: "
                        "`make run`, then `dvc exp run -S method=orpo`, log one each", pytrace=False)
        runs[method] = found[0]
        same_seeds = "".join(f" and params.`{key}` = '{value}'" for key, value in found[0].data.params.items()
                             if key.endswith("seed"))
    return Store(uri, tmp / "artifacts", experiment.experiment_id,
                 {method: run.info.run_id for method, run in runs.items()},
                 {method: run.data.metrics[KEY_METRIC] for method, run in runs.items()}, real=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory, adapters) -> Store:
    """A temp sqlite store holding the runs COMMITTED and "orpo" in experiment "tunelab", each with
    its aligned model registered (tiny adapters stand in for the models: the UI only lists them)."""
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("mlflow-ui")
    if os.environ.get("TUNELAB_SCREENSHOT"):
        return project_store(tmp)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    artifacts = tmp / "artifacts"
    # log_pipeline_run's set_experiment would create the experiment with its artifacts under ./mlruns of the
    # working directory (the repo); made here first, they stay in tmp.
    experiment_id = MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
    committed = committed_inputs()
    orpo = as_orpo(*committed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)  # log_pipeline_run reads it
        run_ids = {COMMITTED: log_run(*committed, COMMITTED, adapters), "orpo": log_run(*orpo, "orpo", adapters)}
    return Store(uri, artifacts, experiment_id, run_ids,
                 {COMMITTED: key_metric_value(committed[1]), "orpo": key_metric_value(orpo[1])})


def wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    """Poll /health until the server answers; fail early, with its log, if it exits first."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.25)  # poll interval of a readiness probe; the loop exits on the answer
    pytest.fail(f"mlflow server not healthy after {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (uvicorn and job-runner children), SIGKILL if stuck."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def server(store: Store, request) -> str:
    """`mlflow server` (UI + REST API) with TuneLab's app, as `make ui` serves it, on a free loopback
    port; returns its base URL."""
    port = free_port()
    log = store.artifacts.parent / "server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", "tunelab", "--backend-store-uri", store.uri,
               "--artifacts-destination", str(store.artifacts), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    with log.open("w") as out:
        # Its own session, so stop() can signal the worker processes too; cwd in tmp so nothing
        # the server creates by default (./mlartifacts) lands in the repo.
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=store.artifacts.parent,
                                   start_new_session=True)
    request.addfinalizer(lambda: stop(process))
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process, log)
    return url


@pytest.fixture(scope="module", autouse=True)
def require_chromium() -> None:
    """Fail (not skip) at once, before a minute of store and server setup, if the browser is missing."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium package", pytrace=False)


@pytest.fixture(scope="module")
def browser() -> Browser:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Page:
    # A fresh context per test: MLflow keeps UI state (workflow type, panels) in localStorage.
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    yield page
    context.close()


def experiment_url(server: str, store: Store) -> str:
    """The experiment as the UI's experiment list links to it: no view named in the address, so
    the browser's setting decides, which tunelab.track.ui sets to the runs table first."""
    return f"{server}/#/experiments/{store.experiment_id}"


def compare_url(server: str, store: Store) -> str:
    """The run-comparison page, with the JSON lists MLflow's own "Compare" button builds."""
    runs = quote(json.dumps(list(store.run_ids.values()), separators=(",", ":")))
    experiments = quote(json.dumps([store.experiment_id], separators=(",", ":")))
    return f"{server}/#/compare-runs?runs={runs}&experiments={experiments}"


def ui_number(value: float) -> str:
    """A metric as the UI prints it: MLflow's Utils.formatMetric, for 0.001 <= |value| < 10, is
    `Math.round(value * 1000) / 1000`. JavaScript rounds halves up (0.3625 -> 0.363) where Python's
    round() gives 0.362, so the JavaScript rule is written out here."""
    return f"{math.floor(value * 1000 + 0.5) / 1000:g}"


def section(page: Page, title: str):
    """One collapsible section of the comparison page (Parameters, Metrics, Tags), found by its switch."""
    switch = page.get_by_role("switch", name=f"{title} - Show diff only")
    return page.locator(".du-bois-light-collapse-item").filter(has=switch), switch


def close_assistant(page: Page) -> None:
    """The "MLflow Assistant" side panel opens by default and takes a third of the width."""
    close = page.locator("[data-assistant-ui]").get_by_role("button", name="Close")
    if close.is_visible():
        close.click()


def expect_runs_table(page: Page, store: Store) -> None:
    for name, run_id in store.run_ids.items():
        link = page.get_by_role("link", name=name, exact=True)
        expect(link).to_be_visible()
        expect(link).to_have_attribute("href", re.compile(f"/runs/{run_id}$"))


def test_experiment_opens_on_its_runs_table(server: str, store: Store, page: Page) -> None:
    page.goto(experiment_url(server, store))
    expect_runs_table(page, store)
    expect(page).to_have_url(re.compile(f"/experiments/{store.experiment_id}/runs"))


def test_the_address_make_ui_prints_opens_the_runs_table(server: str, store: Store, page: Page) -> None:
    page.goto(runs_table_url(server, store.experiment_id))
    expect_runs_table(page, store)


def test_a_researcher_who_chose_genai_keeps_it(server: str, store: Store, page: Page) -> None:
    page.goto(server)
    page.evaluate(f"localStorage.setItem({json.dumps(WORKFLOW_SETTING)}, {json.dumps(json.dumps('genai'))})")
    page.goto("about:blank")  # then a fresh load of the UI's page, whose first script reads the setting
    page.goto(experiment_url(server, store))
    expect(page).to_have_url(re.compile(f"/experiments/{store.experiment_id}/overview"))
    assert page.evaluate(f"localStorage.getItem({json.dumps(WORKFLOW_SETTING)})") == json.dumps("genai")


def test_registered_version_page_shows_its_tags(server: str, store: Store, page: Page) -> None:
    page.goto(f"{server}/#/models/tunelab-aligned/versions/1")
    close_assistant(page)
    for key, value in (("method", COMMITTED), ("run_id", store.run_ids[COMMITTED]), ("variant", "aligned")):
        row = page.get_by_role("row").filter(has=page.get_by_text(key, exact=True))
        expect(row.get_by_text(value, exact=True)).to_be_visible()


def test_compare_view_shows_method_and_key_metric(server: str, store: Store, page: Page) -> None:
    page.goto(compare_url(server, store))
    params, params_diff = section(page, "Parameters")
    metrics, metrics_diff = section(page, "Metrics")
    tags, tags_diff = section(page, "Tags")
    expect(metrics_diff).to_be_visible()
    close_assistant(page)

    # The metrics table is virtualised (only its first rows are in the DOM); the runs differ in one
    # metric, so "Show diff only" brings the key metric in. The same for the ~200 parameters.
    params_diff.click()
    metrics_diff.click()
    if store.real:  # hundreds of metrics differ between two real runs; the chart shows the key one
        plot_key_metrics(page)
    else:
        expect(metrics.get_by_role("link", name=KEY_METRIC, exact=True)).to_be_visible()
        expect(metrics).to_contain_text(ui_number(store.key_metric[COMMITTED]))
        expect(metrics).to_contain_text(ui_number(store.key_metric["orpo"]))

    for table in (params, tags):  # columns follow the runs' order in the URL: COMMITTED, then orpo
        method = table.get_by_role("row").filter(has=page.get_by_role("rowheader", name="method", exact=True))
        expect(method.get_by_role("cell")).to_have_text([COMMITTED, "orpo"])

    if os.environ.get("TUNELAB_SCREENSHOT"):
        tags_diff.click()  # hides git_commit (the same in both runs)
        save_screenshot(page, Path(os.environ["TUNELAB_SCREENSHOT"]))


# The parallel-coordinates chart of the picture: the method, then SFT's and the aligned model's key metric.
CHART_PARAMS = ("method",)
CHART_METRICS = ("evaluate.variants.sft.ifeval.prompt_level_loose.mean", KEY_METRIC)


def plot_key_metrics(page: Page) -> None:
    """The comparison's parallel-coordinates plot, showing CHART_PARAMS and CHART_METRICS only."""
    page.get_by_role("button", name="Clear All", exact=True).click()
    boxes = page.locator(".du-bois-light-select-selection-search-input")  # Parameters, then Metrics
    for box, names in ((boxes.nth(0), CHART_PARAMS), (boxes.nth(1), CHART_METRICS)):
        for name in names:
            box.click()
            box.fill(name)
            page.locator(".du-bois-light-select-item-option").filter(has=page.get_by_text(name, exact=True)).click()
            page.keyboard.press("Escape")
    plot = page.locator(".pcp-plot")
    for name in (*CHART_PARAMS, *CHART_METRICS):  # plotly writes each axis title as SVG text
        expect(plot.locator("text", has_text=name).first).to_be_attached()


def save_screenshot(page: Page, path: Path) -> None:
    """The comparison, sized to its content: the key metrics' chart open, no artifact list, every row
    in the picture."""
    for title in ("Artifacts",):
        header = page.get_by_role("button", name=title, exact=True)
        if header.get_attribute("aria-expanded") == "true":
            header.click()
            expect(header).to_have_attribute("aria-expanded", "false")
    # The page scrolls inside a container, so full_page alone would cut the tables: back to its top
    # (choosing the chart's metrics scrolled it), then grow the viewport to the content.
    view = page.locator(".CompareRunView")
    view.evaluate("element => element.scrollIntoView()")
    box = view.bounding_box()
    page.set_viewport_size({"width": VIEWPORT["width"],
                            "height": max(VIEWPORT["height"], int(box["y"] + box["height"]) + 32)})
    path.parent.mkdir(parents=True, exist_ok=True)
    page.mouse.move(0, 0)  # no hover highlight on the last header clicked
    # The metric-name column has a fixed width and clips the long key at 14px; a smaller font for
    # the picture only shows it whole.
    page.screenshot(path=path, full_page=True, style=".CompareRunView .ReactVirtualized__Grid a { font-size: 12px; }")
