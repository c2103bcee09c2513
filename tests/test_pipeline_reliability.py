"""Interruptions, determinism and the experiment queue, through real `dvc` on a tiny model.

One project copy is SIGKILLed in the middle of generate, sft, preference and align, one stage per
`dvc repro`, and finished by a last `dvc repro`. A second copy runs the pipeline straight through.
Nothing may be lost or done twice, `dvc.lock` may never record a killed stage, and both copies
must hold the same bytes and the same metrics. Then four experiments go through
`dvc exp run --queue` / `dvc queue start -j 2` and must each land as their own MLflow run.

The kill is real: a `sitecustomize` on the stage processes' PYTHONPATH SIGKILLs the named stage's
own process right after its first durable checkpoint (a generated chunk, or a training
checkpoint), so the kill always falls inside the stage, never before or after it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.pipeline import STAGES, cached_outputs, file_hashes, project_copy, ran_stages, shrink
from tunelab.determinism import content
from tunelab.io import read_json, read_jsonl

pytestmark = pytest.mark.e2e

KILLED_STAGES = ["generate", "sft", "preference", "align"]
QUEUED_METHODS = ["orpo", "kto", "simpo", "ipo"]

KILL_AFTER_FIRST_CHECKPOINT = '''
import os, signal, sys
if "stages." + os.environ.get("TUNELAB_TEST_KILL", "-") in sys.orig_argv:
    sys.path.insert(0, os.getcwd())
    from tunelab import checkpoints, resumable

    def die(method):
        def then_kill(self, *args, **kwargs):
            method(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        return then_kill

    resumable.Shard.append_chunk = die(resumable.Shard.append_chunk)
    checkpoints.CheckpointDir.mark_complete = die(checkpoints.CheckpointDir.mark_complete)
'''


def tiny_params(tiny_model_dir: Path) -> dict:
    params = shrink(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["base"]["source"] = str(tiny_model_dir)
    params["generate"].update(checkpoint_every=4)  # 8 Magpie requests: two chunks, the kill falls after the first
    params["sft"]["optim"].update(max_steps=4, checkpoint_every=2)
    params["align"]["optim"].update(max_steps=4, checkpoint_every=2)
    params["preference"].update(checkpoint_every=20)  # 60 prompts: three chunks
    params["peft_compare"].update(methods=[])
    return params


def dvc(args: list[str], repo: Path, env: dict, check: bool = True):
    import subprocess

    result = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert not check or result.returncode == 0, f"dvc {' '.join(args)} failed:\n{output[-4000:]}"
    return result.returncode, output


def locked_stages(repo: Path) -> dict:
    path = repo / "dvc.lock"
    return yaml.safe_load(path.read_text())["stages"] if path.exists() else {}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("straight") / "tunelab"
    env = project_copy(repo, tiny_params(tiny_model_dir))
    _, output = dvc(["repro"], repo, env)
    assert sorted(ran_stages(output)) == sorted(STAGES)
    return repo, env


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict, list[str]]:
    repo = tmp_path_factory.mktemp("interrupted") / "tunelab"
    env = project_copy(repo, tiny_params(tiny_model_dir))
    hook = tmp_path_factory.mktemp("kill-hook")
    (hook / "sitecustomize.py").write_text(KILL_AFTER_FIRST_CHECKPOINT)
    outputs = []
    for stage in KILLED_STAGES:
        before = locked_stages(repo)
        code, output = dvc(["repro"], repo, {**env, "PYTHONPATH": str(hook), "TUNELAB_TEST_KILL": stage}, check=False)
        outputs.append(output)
        assert code != 0 and ran_stages(output)[-1] == stage, output[-3000:]
        after = locked_stages(repo)
        assert stage not in after, f"dvc.lock records the killed {stage} stage"
        assert set(before) <= set(after)  # stages before it finished and were recorded
        assert any((repo / ".tunelab" / stage).rglob("*")), f"the killed {stage} left no partial work to resume"
    _, output = dvc(["repro"], repo, env)
    outputs.append(output)
    assert ran_stages(output) == ["align", "compress", "evaluate", "report"]
    return repo, env, outputs


def test_killed_stages_resume_and_lose_nothing(interrupted):
    repo, env, outputs = interrupted
    assert set(locked_stages(repo)) == set(STAGES)
    assert "up to date" in dvc(["status"], repo, env)[1].lower()

    generated = read_json(repo / "reports/generate.json")
    for method, expected in (("magpie", 8), ("self_instruct", 4), ("code", 2)):
        ids = [row["id"] for row in read_jsonl(repo / f"data/generated/{method}.jsonl")]
        assert len(ids) == len(set(ids)) == expected, method  # no row lost, none written twice
    resumed_rows = sum(shard["resumed_rows"] for shard in generated["resume"].values())
    assert resumed_rows >= 4  # the killed run's first chunk was kept, not generated again

    for name in ("sft", "align"):
        report = read_json(repo / f"reports/{name}.json")
        assert report["resumed_from_step"] == 2 and report["steps_this_run"] == 2, name
        assert [row["step"] for row in report["history"]] == [1, 2, 3, 4], name  # each step once

    preference = read_json(repo / "reports/preference.json")
    assert preference["resumed_prompts"] == 20 and preference["prompts"] == 60
    keys = [pair["key"] for pair in read_jsonl(repo / "data/preference/pairs.jsonl")]
    assert len(keys) == len(set(keys)) == preference["pairs"]
    assert not any((repo / ".tunelab").rglob("*.jsonl")), "partial work left behind after success"


# A rerun on the same CPU reproduces everything but these measurements exactly (times in seconds
# end in "_s"; the LeetCode runtime ratio is a CPU-time measurement too).
def test_interrupted_run_kept_the_straight_runs_data_and_losses(straight, interrupted):
    (a, _), (b, _, _) = straight, interrupted
    data = ["data/generated", "data/curated"]
    assert file_hashes(a, data) == file_hashes(b, data)
    # After a training resume the weights match the straight run's to float rounding, not bit for
    # bit, so the models and what is built on them are compared between two straight runs below.
    for name in ("sft", "align"):
        want, got = read_json(a / f"reports/{name}.json")["history"], read_json(b / f"reports/{name}.json")["history"]
        assert [h["loss"] for h in got] == pytest.approx([h["loss"] for h in want], rel=1e-4)


def test_two_fresh_runs_give_identical_data_models_and_metrics(straight, tmp_path, tiny_model_dir):
    first, _ = straight
    repo = tmp_path / "tunelab"
    dvc(["repro"], repo, project_copy(repo, tiny_params(tiny_model_dir)))
    outputs = cached_outputs(first)
    data_and_models = [path for path in outputs if not path.startswith("reports/")]
    assert file_hashes(repo, data_and_models) == file_hashes(first, data_and_models)  # byte for byte
    files = sorted({*file_hashes(first, outputs), *(str(p.relative_to(first)) for p in (first / "reports").rglob("*.csv")),
                    *(str(p.relative_to(first)) for p in (first / "reports").glob("*.json"))})
    assert len(files) > 30
    for name in files:
        assert content(repo / name) == content(first / name), name


def test_four_queued_experiments_run_two_at_a_time(straight):
    import mlflow

    repo, env = straight
    for method in QUEUED_METHODS:
        dvc(["exp", "run", "--queue", "-n", f"q-{method}", "-S", f"method={method}"], repo, env)
    dvc(["queue", "start", "-j", "2"], repo, env)
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        status = dvc(["queue", "status"], repo, env)[1]
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(5)
    else:
        pytest.fail(f"the queue did not finish in 20 minutes:\n{status}")
    dvc(["queue", "stop"], repo, env, check=False)

    logs = {method: dvc(["queue", "logs", f"q-{method}"], repo, env)[1] for method in QUEUED_METHODS}
    for method, log in logs.items():
        assert "database is locked" not in log, log[-3000:]
        assert ran_stages(log) == ["align", "compress", "evaluate", "report"], log[-3000:]
    assert status.count("Success") == 4, status

    shown = json.loads(dvc(["exp", "show", "--json"], repo, env)[1])
    names = {exp.get("name") for baseline in shown for exp in (baseline.get("experiments") or [])}
    assert {f"q-{method}" for method in QUEUED_METHODS} <= names

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tunelab").experiment_id])
    finished = sorted((r.info.run_name, r.data.tags["method"], r.info.status) for r in runs)
    assert finished == sorted([(f"q-{m}", m, "FINISHED") for m in QUEUED_METHODS] + [("workspace-dpo", "dpo", "FINISHED")])
