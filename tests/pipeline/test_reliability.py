"""Interruptions, determinism and the experiment queue, through real `dvc` on a tiny model.

One project copy is SIGKILLed in the middle of generate, sft, preference and align, one stage per
`dvc repro`, and finished by a last `dvc repro`. Two more copies run the pipeline straight through.
Nothing may be lost or done twice, `dvc.lock` may never record a killed stage, the killed copy must
hold the straight one's data and losses, and the two straight copies the same bytes and metrics.
Then two experiments go through `dvc exp run --queue` / `dvc queue start -j 2` in the first
straight copy, at once, and must each land as their own MLflow run.

The three copies share nothing, so they run side by side: on the tiny model a stage is mostly
interpreter start-up on one core, and one pipeline at a time would leave the other core idle.

The kill is real: a `sitecustomize` on the stage processes' PYTHONPATH SIGKILLs the named stage's
own process right after its first durable checkpoint (a generated chunk, or a training
checkpoint), so the kill always falls inside the stage, never before or after it.
"""

from __future__ import annotations

import copy
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.pipeline.workspace import (DEFAULT_METHOD, STAGES, cached_outputs, file_hashes, is_method_switch,
                                      project_copy, ran_stages, shrink)
from tunelab.core.io import read_json, read_jsonl
from tunelab.track.determinism import content

pytestmark = pytest.mark.e2e

KILLED_STAGES = ["generate", "sft", "preference", "align"]
# Two methods other than the workspace's own (queued, it would change nothing and re-run nothing): a
# paired reference-free one and the unpaired one. Every method's align stage runs in test_stages.
QUEUED_METHODS = [method for method in ("orpo", "kto", "dpo") if method != DEFAULT_METHOD][:2]

KILL_AFTER_FIRST_CHECKPOINT = '''
import os, signal, sys
if "stages." + os.environ.get("TUNELAB_TEST_KILL", "-") in sys.orig_argv:
    sys.path.insert(0, os.getcwd())
    from tunelab.train import checkpoints
    from tunelab.core import resumable

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
    # A random model's answers are random tokens: they fail nearly every instruction alike, so the
    # default mix left 0 pairs (CI, 2026-11-22). A comma is the one thing random tokens sometimes
    # hold; 4 answers of 32 tokens under `no_comma` alone give 9 pairs, so align has data.
    params["preference"].update(samples_per_prompt=4)
    params["preference"]["instructions"].update(instruction_ids=["punctuation:no_comma"], max_per_prompt=1,
                                                variants_per_prompt=1)
    # One instruction leaves no combination for validation prompts to use that training does not.
    params["preference"].update(validation_fraction=0.0)
    params["preference"]["sampling"].update(max_new_tokens=32)
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


def repro_straight(repo: Path, params: dict) -> tuple[Path, dict]:
    """A fresh project at `repo` run through `dvc repro` in one go."""
    env = project_copy(repo, params)
    _, output = dvc(["repro"], repo, env)
    assert sorted(ran_stages(output)) == sorted(STAGES)
    return repo, env


def repro_interrupted(repo: Path, params: dict, hook: Path) -> tuple[Path, dict, list[str]]:
    """A fresh project at `repo` whose `dvc repro` is SIGKILLed inside each of KILLED_STAGES in turn, then finished."""
    env = project_copy(repo, params)
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
    unfinished = set(STAGES) - set(locked_stages(repo))  # align and below, and whatever DVC had not reached
    _, output = dvc(["repro"], repo, env)
    outputs.append(output)
    assert "align" in unfinished and sorted(ran_stages(output)) == sorted(unfinished)
    return repo, env, outputs


@pytest.fixture(scope="module")
def projects(tmp_path_factory, tiny_model_dir) -> dict[str, Future]:
    """The module's three projects, started at once; each fixture below waits for its own."""
    params = tiny_params(tiny_model_dir)
    hook = tmp_path_factory.mktemp("kill-hook")
    (hook / "sitecustomize.py").write_text(KILL_AFTER_FIRST_CHECKPOINT)
    with ThreadPoolExecutor(max_workers=3) as pool:
        yield {
            "straight": pool.submit(repro_straight, tmp_path_factory.mktemp("straight") / "tunelab", copy.deepcopy(params)),
            "again": pool.submit(repro_straight, tmp_path_factory.mktemp("again") / "tunelab", copy.deepcopy(params)),
            "interrupted": pool.submit(repro_interrupted, tmp_path_factory.mktemp("interrupted") / "tunelab",
                                       copy.deepcopy(params), hook),
        }


@pytest.fixture(scope="module")
def straight(projects) -> tuple[Path, dict]:
    return projects["straight"].result()


@pytest.fixture(scope="module")
def again(projects) -> tuple[Path, dict]:
    return projects["again"].result()


@pytest.fixture(scope="module")
def interrupted(projects) -> tuple[Path, dict, list[str]]:
    return projects["interrupted"].result()


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


def test_two_fresh_runs_give_identical_data_models_and_metrics(straight, again):
    (first, _), (repo, _) = straight, again
    outputs = cached_outputs(first)
    data_and_models = [path for path in outputs if not path.startswith("reports/")]
    assert file_hashes(repo, data_and_models) == file_hashes(first, data_and_models)  # byte for byte
    files = sorted({*file_hashes(first, outputs), *(str(p.relative_to(first)) for p in (first / "reports").rglob("*.csv")),
                    *(str(p.relative_to(first)) for p in (first / "reports").glob("*.json"))})
    assert len(files) > 30
    for name in files:
        assert content(repo / name) == content(first / name), name


def experiment_ref(repo: Path, env: dict, name: str) -> bool:
    """Whether a successful experiment `name` exists (DVC keeps each one under refs/exps/)."""
    import subprocess

    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo, env=env,
                          capture_output=True, text=True, check=True).stdout.split()
    return any(ref.rsplit("/", 1)[-1] == name for ref in refs)


def experiment_states(repo: Path, env: dict) -> dict[str, str]:
    """Each experiment's state (queued, running, success or failed), as `dvc exp show` reports it.

    Not from `dvc queue status`: that asks the running workers for their tasks through message files
    the workers read, and a worker that reads one half-written stops for good (treeverse/dvc-task#73),
    which stranded two of the four experiments here once.
    """
    import subprocess

    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True,
                           check=True).stdout  # stdout alone: warnings go to stderr while experiments run
    return {exp["name"]: (exp.get("executor") or {}).get("state") for baseline in json.loads(shown)
            for exp in (baseline.get("experiments") or [])}


def test_two_queued_experiments_run_at_once(straight):
    import mlflow

    repo, env = straight
    names = [f"q-{method}" for method in QUEUED_METHODS]
    for method in QUEUED_METHODS:
        dvc(["exp", "run", "--queue", "-n", f"q-{method}", "-S", f"method={method}"], repo, env)
    dvc(["queue", "start", "-j", "2"], repo, env)
    deadline = time.monotonic() + 1200
    last_asked = time.monotonic()
    # A finished experiment is a git ref, cheap to look for; `dvc exp show` costs seconds of CPU that the
    # queue's stages need, so only every minute does it ask whether one failed (a failure writes no ref).
    while not all(experiment_ref(repo, env, name) for name in names):
        if time.monotonic() > deadline:
            pytest.fail(f"the queue did not finish in 20 minutes:\n{dvc(['queue', 'status'], repo, env)[1]}")
        if time.monotonic() - last_asked > 60:
            last_asked = time.monotonic()
            if "failed" in {experiment_states(repo, env).get(name) for name in names}:
                break
        time.sleep(3)
    while not {experiment_states(repo, env).get(name) for name in names} <= {"success", "failed"}:
        time.sleep(3)  # the worker writes the ref, then records the task done
    status = dvc(["queue", "status"], repo, env)[1]  # safe now: no task is left for a worker to drop
    dvc(["queue", "stop"], repo, env, check=False)

    logs = {method: dvc(["queue", "logs", f"q-{method}"], repo, env)[1] for method in QUEUED_METHODS}
    for method, log in logs.items():
        assert "database is locked" not in log, log[-3000:]
        assert is_method_switch(ran_stages(log)), log[-3000:]
    assert status.count("Success") == len(QUEUED_METHODS) == 2, status

    states = experiment_states(repo, env)
    assert {name: states.get(name) for name in names} == dict.fromkeys(names, "success"), states

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tunelab").experiment_id])
    finished = sorted((r.info.run_name, r.data.tags["method"], r.info.status) for r in runs)
    workspace = (f"workspace-{DEFAULT_METHOD}", DEFAULT_METHOD, "FINISHED")
    assert finished == sorted([(f"q-{m}", m, "FINISHED") for m in QUEUED_METHODS] + [workspace])


def test_seeds_command_runs_the_study_per_seed_and_summarises_the_spread(straight):
    """`tunelab.track.seeds`: one DVC experiment per seed from sft on (generation and every prompt set
    held fixed), then the table, JSON and figure of the headline numbers across them."""
    import subprocess
    import sys

    repo, env = straight
    command = [sys.executable, "-m", "tunelab.track.seeds"]
    ran = subprocess.run([*command, "run", "--seeds", "0", "1", "--label", "tiny"], cwd=repo, env=env,
                         capture_output=True, text=True)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-4000:]
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=env, capture_output=True,
                                      text=True, check=True).stdout)  # stdout alone: warnings go to stderr
    runs = {rev["name"]: rev["data"] for baseline in shown for experiment in baseline.get("experiments") or []
            for rev in experiment["revs"] if (rev.get("name") or "").startswith("seeds-")}
    assert set(runs) == {"seeds-tiny-training-0", "seeds-tiny-training-1"}
    params = {name: data["params"]["params.yaml"]["data"] for name, data in runs.items()}
    assert [params[f"seeds-tiny-training-{s}"]["sft"]["optim"]["seed"] for s in (0, 1)] == [0, 1]
    assert params["seeds-tiny-training-1"]["preference"]["sampling_seed"] == 1
    assert params["seeds-tiny-training-1"]["generate"]["seed"] == params["seeds-tiny-training-0"]["generate"]["seed"]
    deps = {name: {path: entry.get("hash") for path, entry in data["deps"].items()} for name, data in runs.items()}
    first, second = deps["seeds-tiny-training-0"], deps["seeds-tiny-training-1"]
    assert first["data/curated"] == second["data/curated"] and first["data/heldout"] == second["data/heldout"]
    assert first["models/sft"] != second["models/sft"]  # the seed reached training

    tabled = subprocess.run([*command, "table", "--out", str(repo / "reports/seeds")], cwd=repo, env=env,
                            capture_output=True, text=True)
    assert tabled.returncode == 0, (tabled.stdout + tabled.stderr)[-4000:]
    summary = json.loads((repo / "reports/seeds/seeds.json").read_text())
    assert [(s["label"], s["scope"], sorted(s["seeds"])) for s in summary] == [("tiny", "training", ["0", "1"])]
    spread = summary[0]["spread"]
    assert spread["base"]["sd"] == 0 and spread["base"]["seeds"] == 2  # base never trains: the same in every run
    for name in ("sft", "aligned", "aligned - sft"):
        values = [run[name] for run in summary[0]["seeds"].values()]
        assert spread[name]["min"] == min(values) and spread[name]["max"] == max(values)
    assert "| tiny | training | mean ± SD (range) |" in (repo / "reports/seeds/seeds.md").read_text()
    assert (repo / "reports/seeds/seeds.png").stat().st_size > 10_000
