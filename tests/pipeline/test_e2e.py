"""End to end: `dvc repro` on the real SmolLM2 in a temporary copy of the repo, shrunk params.

Then `dvc exp run --temp -S method=orpo` (in a copy of the workspace, as `--queue` runs too) must
re-run only align, compress, evaluate and report, its MLflow run must land in the project's own
store beside the workspace run, `make compare`'s module must draw both, and `dvc push` / `dvc pull`
must round-trip every artifact through a local remote with `verify` on.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.pipeline.workspace import (DEFAULT_METHOD, HELDOUT_BASE_PROMPTS, STAGES, cached_outputs, file_hashes,
                                      is_method_switch, project_copy, ran_stages, run, shrink)
from tunelab.core.io import read_json, read_jsonl

pytestmark = pytest.mark.e2e
# The headline's numbers that come first (tunelab/track/headline.py); None values are not shown.
HEADLINE_FIRST = ("aligned", "aligned-sft", "p_sft", "sft", "base", "aligned-base", "p_base")
# The README's experiments table: the params and numbers that differ, without dependency hashes
# (every column named by a path), so it fits a terminal.
EXP_SHOW = ("--only-changed", "--drop", ".*/")


def test_dvc_repro_then_method_switch(tmp_path):
    repo = tmp_path / "tunelab"
    env = project_copy(repo, shrink(yaml.safe_load((REPO / "params.yaml").read_text())))

    output = run(["dvc", "repro"], repo, env)
    assert sorted(ran_stages(output)) == sorted(STAGES) and ran_stages(output)[-1] == "report"

    for path in ["models/base/model.safetensors", "data/generated/magpie.jsonl", "data/generated/self_instruct.jsonl",
                 "data/generated/code.jsonl", "data/curated/train.jsonl", "reports/data_card.md",
                 "models/sft/adapter_model.safetensors", "data/preference/pairs.jsonl",
                 "models/aligned/adapter_model.safetensors", "models/compressed/int8/tunelab_compressed.json",
                 "reports/samples/aligned_ifeval.jsonl",
                 "reports/report.md", "reports/figures/variants.png", "reports/plots/sft_steps.csv",
                 "reports/plots/align_steps.csv", "dvc.lock"]:
        assert (repo / path).is_file(), path
    assert read_json(repo / "reports/base.json")["parameters"] == 134_515_008
    assert read_json(repo / "reports/curate.json")["kept_rows"] > 0
    sft = read_json(repo / "reports/sft.json")
    assert sft["steps"] == 2 and 0 < sft["train_loss"] < 10
    assert read_json(repo / "reports/preference.json")["pairs"] == len(read_jsonl(repo / "data/preference/pairs.jsonl")) > 0
    align = read_json(repo / "reports/align.json")
    assert align["method"] == DEFAULT_METHOD and align["validation"]["prompts"] == 15  # 15 validation base prompts x 1
    evaluation = read_json(repo / "reports/evaluate.json")
    assert set(evaluation["variants"]) == {"base", "sft", "aligned", "int8"}
    assert evaluation["ifeval_prompts"] == HELDOUT_BASE_PROMPTS
    assert evaluation["ifeval_prompts_with_a_training_mix"] == 0
    assert "judge" not in evaluation["variants"]["aligned"] and not evaluation["judge"]["backend"]  # off by default
    assert "humaneval.pass@1" in evaluation["comparisons"]["aligned_vs_sft"]
    assert evaluation["variants"]["aligned"]["humaneval_sampled"]["pass@2"]["n"] == 2  # pass@k, 2 samples of 2 problems
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    assert "up to date" in run(["dvc", "status"], repo, env).lower()
    headline = read_json(repo / "reports/headline.json")
    assert headline["aligned"] == round(100 * evaluation["variants"]["aligned"]["ifeval"]["prompt_level_loose"]["mean"], 1)
    assert set(json.loads(run(["dvc", "metrics", "show", "--json"], repo, env))[""]["data"]) == {"reports/headline.json"}
    run(["git", "add", "-A"], repo, env)  # as a researcher keeps a run before experimenting from it
    run(["git", "commit", "-qm", "the default run"], repo, env)

    output = run(["dvc", "exp", "run", "--temp", "-n", "orpo-temp", "-S", "method=orpo"], repo, env)
    assert is_method_switch(ran_stages(output)), ran_stages(output)
    shown = run(["dvc", "exp", "show", "--json"], repo, env)
    assert '"orpo-temp"' in shown and '"method": "orpo"' in shown
    orpo = next(rev["data"]["metrics"]["reports/headline.json"]["data"] for baseline in json.loads(shown)
                for experiment in baseline.get("experiments") or [] for rev in experiment["revs"]
                if rev.get("name") == "orpo-temp")
    screens_fit_120_columns(repo, env, headline, orpo)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tunelab").experiment_id])
    assert sorted((r.info.run_name, r.data.tags["method"], r.info.status) for r in runs) == [
        ("orpo-temp", "orpo", "FINISHED"), (f"workspace-{DEFAULT_METHOD}", DEFAULT_METHOD, "FINISHED")]
    key = "evaluate.variants.aligned.ifeval.prompt_level_loose.mean"
    assert all(key in r.data.metrics for r in runs)

    table = run([sys.executable, "-m", "tunelab.track.compare", "--out", "reports/compare"], repo, env)
    assert "| default |" in table and "| orpo-temp |" in table
    assert (repo / "reports/compare/compare.png").stat().st_size > 10_000

    round_trip_through_remote(repo, tmp_path / "remote", env)


def screens_fit_120_columns(repo: Path, env: dict, default: dict, orpo: dict) -> None:
    """The README's `dvc exp show` (only the columns that differ, no dependency hashes) and
    `dvc metrics diff` on a 120-column terminal: the method and the first headline numbers that differ
    between the two runs on screen (DVC folds the rest into `…` from the right). Plain `dvc exp show`
    folds every column at any width: each of the 241 params keys keeps one (docs/tracking.md)."""
    narrow = {**env, "COLUMNS": "120"}
    table = run(["dvc", "exp", "show", "--no-pager", *EXP_SHOW], repo, narrow).splitlines()
    assert all(len(line) <= 120 for line in table), table
    rows = [line.split() for line in table if line.strip() and not line.strip().startswith("─")]
    header = rows[0]
    experiment = next(row for row in rows if "[orpo-temp]" in row)
    baseline = next(row for row in rows[1:] if row[0] != "workspace" and row is not experiment)  # HEAD: the default run
    assert header[0] == "Experiment" and "method" in header, table
    changed = [key for key in HEADLINE_FIRST if default[key] != orpo[key]][:2]
    assert [column for column in header if column in HEADLINE_FIRST][:len(changed)] == changed, (changed, table)
    for row, method, numbers in ((baseline, DEFAULT_METHOD, default), (experiment, "orpo", orpo)):
        assert method in row and all(numbers[key] in numbers_in(row) for key in changed), (row, table)
    diff = run(["dvc", "metrics", "diff", "--all", "HEAD", "orpo-temp"], repo, narrow).splitlines()
    assert len(diff) <= 40 and all(len(line) <= 120 for line in diff), diff
    aligned = next(line.split() for line in diff[1:] if line.split()[1:2] == ["aligned"])
    assert numbers_in(aligned[2:4]) == [default["aligned"], orpo["aligned"]], diff


def numbers_in(cells: list[str]) -> list[float]:
    """The cells that are numbers, as DVC prints them (16.0, 0.043)."""
    numbers = []
    for cell in cells:
        try:
            numbers.append(float(cell))
        except ValueError:
            pass
    return numbers


def round_trip_through_remote(repo: Path, remote: Path, env: dict) -> None:
    """Push everything, lose the cache and the outputs, pull, and get the same bytes back."""
    config = run(["dvc", "config", "--list"], repo, env)
    assert "remote.local.verify=true" in config  # pulled files are re-hashed, not trusted
    run(["dvc", "remote", "modify", "--local", "local", "url", str(remote)], repo, env)  # not the real remote
    outputs = cached_outputs(repo)
    assert {"models/base", "models/sft", "models/aligned", "data/curated", "data/preference"} <= set(outputs)
    before = file_hashes(repo, outputs)
    run(["dvc", "push"], repo, env)
    shutil.rmtree(repo / ".dvc/cache")
    for path in outputs:
        shutil.rmtree(repo / path) if (repo / path).is_dir() else (repo / path).unlink()
    assert "deleted" in run(["dvc", "status"], repo, env)
    run(["dvc", "pull"], repo, env)
    assert "up to date" in run(["dvc", "status"], repo, env).lower()
    assert file_hashes(repo, outputs) == before
