"""The MLflow run of a pipeline run: content, loading models back, and never a run left RUNNING.

Every test logs into its own sqlite store (a real MLflow backend) through the same function the
report stage calls, with the repo's committed stage reports as input.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tunelab.core.config import read_params
from tunelab.core.io import read_json
from tunelab.track.tracking import (
    TrackingSettings,
    TrackingUnavailable,
    download_models,
    log_pipeline_run,
    scalar_metrics,
    wait_for_server,
)

STAGES = ("base", "generate", "curate", "sft", "peft_compare", "preference", "align", "compress", "evaluate")
FAST = TrackingSettings(retries=2, backoff_s=0.05)


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def reports():
    return {name: read_json(REPO / f"reports/{name}.json") for name in STAGES}


def _runs(client, experiment="tunelab"):
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """models/sft and models/aligned as LoRA adapters on the tiny model, in a project-like folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("project")
    for seed, name in ((1, "sft"), (2, "aligned")):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        model.save_pretrained(root / "models" / name)
    return root


def test_run_holds_params_metrics_curves_datasets_and_artifacts(store, reports, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lora-orpo")
    params = read_params(REPO / "params.yaml")
    (tmp_path / "data/curated").mkdir(parents=True)
    lock = {"stages": {"curate": {"outs": [{"path": "data/curated", "md5": "814220586ace45f966847e340fe3fad8.dir"}]}}}
    report = tmp_path / "report.md"
    report.write_text("# report\n")
    run_id = log_pipeline_run(params, reports, lock, {"": [report], "config": [REPO / "params.yaml"]}, FAST, root=tmp_path)

    run = store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "lora-orpo"
    assert run.data.tags["method"] == params["method"] and run.data.tags["dvc.exp_name"] == "lora-orpo"
    assert len(run.data.tags["git.commit"]) == 40
    sandbox = reports["evaluate"]["sandbox"]  # what the evaluated model code ran under, visible in the UI
    assert run.data.tags["sandbox.protections"] == ",".join(sandbox["protections"]) != ""
    assert run.data.tags["sandbox.missing"] == (",".join(sandbox["missing"]) or "none")
    assert run.data.params["sft.optim.max_steps"] == str(params["sft"]["optim"]["max_steps"])
    aligned = reports["evaluate"]["variants"]["aligned"]
    assert run.data.metrics["evaluate.variants.aligned.ifeval.prompt_level_loose.mean"] == pytest.approx(
        aligned["ifeval"]["prompt_level_loose"]["mean"])
    summary = {key: value for key, value in run.data.metrics.items() if ".curve." not in key}
    assert summary == pytest.approx(scalar_metrics(reports))  # every number of every report
    steps = store.get_metric_history(run_id, "sft.curve.loss")
    assert [m.step for m in steps] == [h["step"] for h in reports["sft"]["history"]]
    [dataset] = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("data/curated", "814220586ace45f966847e340fe3fad8")
    assert [tag.value for tag in dataset.tags] == ["training"]
    assert {a.path for a in store.list_artifacts(run_id)} == {"report.md", "config"}


def test_no_estimate_is_not_logged_as_zero():
    reports = {"evaluate": {"variants": {"sft": {"leetcode": {"runtime_ratio": {"mean": None, "n": 0}}}}}}
    assert scalar_metrics(reports) == {"evaluate.variants.sft.leetcode.runtime_ratio.n": 0.0}


def test_logged_adapters_load_back_into_the_same_model(store, reports, adapters, tiny_model_dir, tmp_path):
    import torch

    from tunelab.core.models import load_variant

    run_id = log_pipeline_run({"method": "dpo"}, reports, {}, {}, FAST, root=adapters)
    downloaded = download_models(run_id, tmp_path / "download")
    tokens = torch.tensor([[1, 2, 3, 4]])
    original = load_variant(tiny_model_dir, [adapters / "models/sft", adapters / "models/aligned"])
    restored = load_variant(tiny_model_dir, downloaded)
    assert torch.equal(original(tokens).logits, restored(tokens).logits)


def test_model_over_the_size_limit_is_tagged_not_copied(store, reports, adapters):
    run_id = log_pipeline_run({"method": "dpo"}, reports, {}, {}, TrackingSettings(max_model_mb=0.0), root=adapters)
    assert "tunelab.not_logged.models/sft" in store.get_run(run_id).data.tags
    with pytest.raises(FileNotFoundError, match="dvc pull"):
        download_models(run_id, Path("unused"))


def test_server_that_is_down_is_retried_then_fails_naming_it(monkeypatch, caplog):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(TrackingUnavailable, match=rf"{uri} did not answer after 3 tries.*dvc repro report"):
        log_pipeline_run({"method": "dpo"}, {}, {}, {}, TrackingSettings(retries=3, backoff_s=0.01))
    assert caplog.text.count("retrying in") == 2


def test_server_answering_503_is_not_taken_as_up(caplog):
    """A server answering 503 (still starting) twice, then 200, is asked three times, not once."""
    answers = iter([503, 503, 200])
    asked = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            asked.append(self.path)
            self.send_response(next(answers))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wait_for_server(f"http://127.0.0.1:{server.server_port}", retries=3, backoff_s=0.01)
    finally:
        server.shutdown()
    assert asked == ["/health"] * 3
    assert caplog.text.count("retrying in") == 2


def test_server_that_comes_up_while_retrying_is_used(tmp_path, monkeypatch, caplog):
    """A real `mlflow server` started after the first tries fail is waited for, then logged to."""
    import mlflow

    with socket.socket() as probe:  # a loopback port nothing listens on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
               "--default-artifact-root", str(tmp_path / "artifacts")]
    # Started only after the first try has failed, in its own process group so that all of it can be stopped.
    server = subprocess.Popen(["sh", "-c", 'sleep 2; exec "$@"', "sh", *command], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # Tries at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 63.5 s: the server needs several seconds to start.
        wait_for_server(uri, retries=8, backoff_s=0.5)
        failed = caplog.text.count("retrying in")
        assert failed >= 1, "returned before the server was started"
        assert server.poll() is None, "the server exited"
        with urllib.request.urlopen(f"{uri}/health", timeout=10) as health:
            assert health.status == 200  # wait_for_server returned only once the server was up

        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.delenv("DVC_EXP_NAME", raising=False)
        run_id = log_pipeline_run({"method": "dpo"}, {"sft": {"train_loss": 1.5}}, {}, {}, FAST, root=tmp_path)
        assert caplog.text.count("retrying in") == failed  # up now: the report stage's own check passes at once
        run = mlflow.MlflowClient(uri).get_run(run_id)
        assert (run.info.status, run.data.metrics) == ("FINISHED", {"sft.train_loss": 1.5})
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


CHILD = textwrap.dedent("""
    import sys, time
    import mlflow
    from tunelab.track.tracking import ended_run, tracking_uri
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment("tunelab")
    import os, socket
    with ended_run(mlflow, "child", {{"tunelab.host": socket.gethostname(), "tunelab.pid": str(os.getpid())}}):
        print("started", flush=True)
        {body}
""")


def _child(body: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD.format(body=body)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def _wait_started(child: subprocess.Popen) -> None:
    assert child.stdout.readline().strip() == "started", child.stderr.read()


def test_sigterm_ends_the_run_killed(store):
    child = _child("time.sleep(60)")
    _wait_started(child)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 1
    assert "marked KILLED" in child.stderr.read()
    assert [r.info.status for r in _runs(store)] == ["KILLED"]


def test_an_error_ends_the_run_failed(store):
    child = _child("raise ValueError('broken report')")
    _wait_started(child)
    assert child.wait(timeout=60) == 1
    assert [r.info.status for r in _runs(store)] == ["FAILED"]


def test_run_of_a_sigkilled_process_is_closed_by_the_next_one(store, reports):
    child = _child("time.sleep(60)")
    _wait_started(child)
    child.kill()  # SIGKILL: no handler runs, the run stays RUNNING in the store...
    child.wait(timeout=60)
    assert [r.info.status for r in _runs(store)] == ["RUNNING"]
    log_pipeline_run({"method": "dpo"}, reports, {}, {}, FAST)  # ...until the next report stage
    assert sorted(r.info.status for r in _runs(store)) == ["FINISHED", "KILLED"]


def test_live_run_of_another_process_is_left_alone(store, reports):
    child = _child("time.sleep(60)")
    _wait_started(child)
    try:
        log_pipeline_run({"method": "dpo"}, reports, {}, {}, FAST)
        assert sorted(r.info.status for r in _runs(store)) == ["FINISHED", "RUNNING"]
    finally:
        child.kill()
        child.wait(timeout=60)
