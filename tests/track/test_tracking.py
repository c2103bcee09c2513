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
from tunelab.track.report import interval_cell
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
    # The run page's description is the variants x key metrics table; the UI opens the experiment on its runs.
    description = run.data.tags["mlflow.note.content"]
    assert f"| aligned | {interval_cell(aligned['ifeval']['prompt_level_loose'])} |" in description
    assert store.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert not store.search_registered_models()  # no models in this project: nothing registered


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


def test_registered_version_loads_back_and_answers_as_the_pipeline_model_does(store, reports, adapters,
                                                                              tiny_model_dir):
    import mlflow

    from tunelab.core.generation import SamplingSettings, chat_prompt, generate_texts
    from tunelab.core.models import load_tokenizer, load_variant

    params = {"method": "dpo", "base": {"source": str(tiny_model_dir), "dtype": "float32"}}
    run_id = log_pipeline_run(params, reports, {}, {}, TrackingSettings(register=["sft", "aligned"]), root=adapters)
    assert [str(v.version) for v in store.search_model_versions("name='tunelab-sft'")] == ["1"]
    [version] = store.search_model_versions("name='tunelab-aligned'")
    assert version.run_id == run_id and version.tags["method"] == "dpo" and version.tags["run_id"] == run_id
    assert len(version.tags["git.commit"]) == 40 and version.tags["variant"] == "aligned"
    assert "IFEval prompt-level loose, %: " + interval_cell(
        reports["evaluate"]["variants"]["aligned"]["ifeval"]["prompt_level_loose"]) in version.description
    [logged] = mlflow.search_logged_models(experiment_ids=[store.get_run(run_id).info.experiment_id],
                                           filter_string="name = 'aligned'", output_format="list")
    assert logged.source_run_id == run_id  # the run page lists it under "Logged models"

    prompts = ["Name a colour.", "Count to three."]
    answers = mlflow.pyfunc.load_model("models:/tunelab-aligned/1").predict(prompts, params={"max_new_tokens": 6})
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_variant(tiny_model_dir, [adapters / "models/sft", adapters / "models/aligned"])
    expected = generate_texts(model, tokenizer, [chat_prompt(tokenizer, p) for p in prompts],
                              SamplingSettings(max_new_tokens=6, temperature=0.0), seed=0)
    assert answers == expected and all(answers)


def test_model_over_the_size_limit_is_registered_by_reference(store, reports, adapters):
    import mlflow

    log_pipeline_run({"method": "dpo"}, reports, {}, {}, TrackingSettings(max_model_mb=0.0), root=adapters)
    [version] = store.search_model_versions("name='tunelab-aligned'")
    assert version.tags["weights"] == "by reference: dvc pull models/sft models/aligned"
    assert "dvc pull models/sft models/aligned" in version.description
    with pytest.raises(FileNotFoundError, match="holds no weights .* restore them with `dvc pull models/sft"):
        mlflow.pyfunc.load_model("models:/tunelab-aligned/1")


def test_make_ui_prints_the_runs_table_address(store, reports, capsys, tmp_path):
    from tunelab.track.tracking import main

    main(["runs-url", "http://127.0.0.1:5000"])
    assert "no MLflow experiment 'tunelab'" in capsys.readouterr().out
    run_id = log_pipeline_run({"method": "dpo"}, reports, {}, {}, FAST, root=tmp_path)
    main(["runs-url", "http://127.0.0.1:5000"])
    experiment = store.get_run(run_id).info.experiment_id
    assert capsys.readouterr().out == (f"MLflow runs table: http://127.0.0.1:5000/#/experiments/{experiment}/runs"
                                       "?workflowType=machine_learning\n")


def test_unknown_variant_to_register_fails_clearly():
    from tunelab.core.config import ConfigError

    with pytest.raises(ConfigError, match="tracking.register: int8 cannot be registered"):
        TrackingSettings(register=["int8"])


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
