"""End to end: `dvc repro` on the real SmolLM2 in a temporary copy of the repo, shrunk params.

Then `dvc exp run --temp -S method=orpo` (in a copy of the workspace, as `--queue` runs too) must
re-run only align, compress, evaluate and report, its MLflow run must land in the project's own
store beside the workspace run, `make compare`'s module must draw both, and `dvc push` / `dvc pull`
must round-trip every artifact through a local remote with `verify` on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, write_params
from tunelab.io import read_json, read_jsonl

pytestmark = pytest.mark.e2e

SKIP = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache", "mlflow.db", "mlruns", "cache", "tmp", ".tunelab",
                              "dvc.lock", "models", "generated", "curated", "preference", "samples", "figures")
STAGES = ["base", "generate", "curate", "sft", "peft_compare", "preference", "align", "compress", "evaluate",
          "report"]


def shrink(params: dict) -> dict:
    params["generate"].update(checkpoint_every=8)
    params["generate"]["magpie"].update(count=8)
    params["generate"]["magpie"]["instruction"].update(max_new_tokens=24, batch_size=8)
    params["generate"]["self_instruct"].update(count=4)
    params["generate"]["self_instruct"]["instruction"].update(max_new_tokens=24, batch_size=8)
    params["generate"]["code"].update(count=2, verify=True)
    params["generate"]["response"].update(max_new_tokens=32, batch_size=8)
    params["generate"]["code_response"].update(max_new_tokens=48, batch_size=8)
    params["curate"].update(min_response_words=3, min_instruction_words=2)
    params["sft"]["optim"].update(max_steps=2, max_length=128)
    params["peft_compare"].update(max_steps=1, generation_prompts=2)
    params["peft_compare"]["sampling"].update(max_new_tokens=8)
    params["preference"].update(samples_per_prompt=2, min_margin=0.01)
    params["preference"]["sampling"].update(max_new_tokens=16, batch_size=60)
    params["align"]["optim"].update(max_steps=2, max_length=128)
    params["evaluate"].update(humaneval_limit=2)
    params["evaluate"]["ifeval_sampling"].update(max_new_tokens=12)
    params["evaluate"]["code_sampling"].update(max_new_tokens=24)
    params["evaluate"]["leetcode"].update(limit=2, quality_repeats=1)
    params["evaluate"]["leetcode"]["decoding"].update(max_new_tokens=24)
    params["evaluate"]["pass_at_k"].update(samples=2, k=[1, 2], limit=2)
    params["evaluate"]["pass_at_k"]["decoding"].update(max_new_tokens=24)
    params["compress"].update(prune_sparsity=0.0)  # int8 only: one compressed variant keeps the test short
    return params


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def test_dvc_repro_then_method_switch(tmp_path):
    repo = tmp_path / "tunelab"
    shutil.copytree(REPO, repo, ignore=SKIP)
    write_params(repo / "params.yaml", shrink(yaml.safe_load((REPO / "params.yaml").read_text())))
    # No MLFLOW_TRACKING_URI: the default store, mlflow.db at the project root, is what is tested.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", HF_HUB_OFFLINE="1", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "shrunk copy"], repo, env)

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
    assert read_json(repo / "reports/align.json")["method"] == "dpo"
    evaluation = read_json(repo / "reports/evaluate.json")
    assert set(evaluation["variants"]) == {"base", "sft", "aligned", "int8"} and evaluation["ifeval_prompts"] == 40
    assert evaluation["variants"]["aligned"]["judge"]["judgements"] == 80
    assert "humaneval.pass@1" in evaluation["comparisons"]["aligned_vs_sft"]
    assert evaluation["variants"]["aligned"]["humaneval_sampled"]["pass@2"]["n"] == 2  # pass@k, 2 samples of 2 problems
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    assert "up to date" in run(["dvc", "status"], repo, env).lower()
    metrics = run(["dvc", "metrics", "show", "--json"], repo, env)
    assert "prompt_level_loose" in metrics

    output = run(["dvc", "exp", "run", "--temp", "-n", "orpo-temp", "-S", "method=orpo"], repo, env)
    assert ran_stages(output) == ["align", "compress", "evaluate", "report"]
    shown = run(["dvc", "exp", "show", "--json"], repo, env)
    assert '"orpo-temp"' in shown and '"method": "orpo"' in shown

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tunelab").experiment_id])
    assert sorted((r.info.run_name, r.data.tags["method"], r.info.status) for r in runs) == [
        ("orpo-temp", "orpo", "FINISHED"), ("workspace-dpo", "dpo", "FINISHED")]
    key = "evaluate.variants.aligned.ifeval.prompt_level_loose.mean"
    assert all(key in r.data.metrics for r in runs)

    table = run([sys.executable, "-m", "tunelab.compare", "--out", "reports/compare"], repo, env)
    assert "| default (HEAD) |" in table and "| orpo-temp |" in table
    assert (repo / "reports/compare/compare.png").stat().st_size > 10_000

    round_trip_through_remote(repo, tmp_path / "remote", env)


def cached_outputs(repo: Path) -> list[str]:
    """Outputs DVC stores, and so the remote's job; `cache: false` metrics, plots and reports live in git."""
    uncached = {path for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values()
                for kind in ("outs", "metrics", "plots") for entry in stage.get(kind, []) if isinstance(entry, dict)
                for path, options in entry.items() if (options or {}).get("cache") is False}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])
            if out["path"] not in uncached]


def file_hashes(repo: Path, paths: list[str]) -> dict[str, str]:
    import hashlib

    files = [f for p in paths for f in ([repo / p] if (repo / p).is_file() else sorted((repo / p).rglob("*")))]
    return {str(f.relative_to(repo)): hashlib.md5(f.read_bytes()).hexdigest() for f in files if f.is_file()}


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
