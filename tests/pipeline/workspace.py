"""A real DVC project to test against: a copy of this repo with shrunk params, and helpers to drive it."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO, write_params

_OUTPUTS_AND_CACHES = shutil.ignore_patterns(
    ".venv", ".git", "__pycache__", ".pytest_cache", "mlflow.db", "mlruns", "cache", "tmp", ".tunelab", "dvc.lock",
    "models", "generated", "curated", "preference", "heldout", "eval", "samples", "figures")


def SKIP(directory: str, names: list[str]) -> set[str]:
    """What a project copy leaves out: outputs and caches, but never code (tunelab/eval is a package)."""
    if Path(directory).resolve().is_relative_to(REPO / "tunelab"):
        return {name for name in names if name == "__pycache__"}
    return _OUTPUTS_AND_CACHES(directory, names)
DEFAULT_METHOD = yaml.safe_load((REPO / "params.yaml").read_text())["method"]
STAGES = ["params", "base", "generate", "curate", "sft", "peft_compare", "preference", "reward", "align", "compress",
          "heldout", "evaluate_base", "evaluate_sft", "evaluate_aligned", "evaluate_compressed", "evaluate", "report"]
# What a method switch re-runs: base's and sft's evaluations depend on nothing the method changes.
SWITCH_STAGES = {"params", "align", "compress", "evaluate_aligned", "evaluate_compressed", "evaluate", "report"}


def is_method_switch(stages: list[str]) -> bool:
    """Exactly SWITCH_STAGES ran, the params check then align first and report last (DVC picks the
    order in between)."""
    return set(stages) == SWITCH_STAGES and len(stages) == len(SWITCH_STAGES) and stages[:2] == ["params", "align"] \
        and stages[-1] == "report"


# Every variant answers every held-out prompt, in each pipeline the tests run: 25 of the 203 base
# prompts still let each of the 25 instruction types lead one of them (evaluate.heldout.balanced).
HELDOUT_BASE_PROMPTS = 25


def shrink(params: dict) -> dict:
    params["generate"].update(checkpoint_every=8)
    params["generate"]["magpie"].update(count=8)
    params["generate"]["magpie"]["instruction"].update(max_new_tokens=24, batch_size=8)
    params["generate"]["self_instruct"].update(count=4)
    params["generate"]["self_instruct"]["instruction"].update(max_new_tokens=24, batch_size=8)
    params["generate"]["code"].update(count=2, verify=True)
    params["generate"]["response"].update(max_new_tokens=32, batch_size=8)
    params["generate"]["code_response"].update(max_new_tokens=48, batch_size=8)
    params["curate"].update(min_response_words=3, min_instruction_words=2, drop_cut_answers=False)  # 32 tokens cut most
    params["sft"]["optim"].update(max_steps=2, max_length=128)
    params["peft_compare"].update(max_steps=1, generation_prompts=2)
    params["peft_compare"]["sampling"].update(max_new_tokens=8)
    params["preference"].update(samples_per_prompt=2, min_margin=0.01)
    params["preference"]["instructions"].update(variants_per_prompt=1)  # 45 training, 15 validation prompts
    params["preference"]["sampling"].update(max_new_tokens=16, batch_size=60)
    params["preference"]["validation_sampling"].update(max_new_tokens=12)
    params["preference"]["sources"]["code"].update(heldout=2)  # the held-out code pairs, a few
    params["align"]["optim"].update(max_steps=2, max_length=128)
    params["evaluate"].update(humaneval_limit=2)
    params["evaluate"]["heldout"].update(variants_per_prompt=1)  # one draw of each held-out base prompt
    params["evaluate"]["ifeval_sampling"].update(max_new_tokens=12)
    params["evaluate"]["code_sampling"].update(max_new_tokens=24)
    params["evaluate"]["leetcode"].update(limit=2, quality_repeats=1)
    params["evaluate"]["leetcode"]["decoding"].update(max_new_tokens=24)
    params["evaluate"]["pass_at_k"].update(samples=2, k=[1, 2], limit=2)
    params["evaluate"]["pass_at_k"]["decoding"].update(max_new_tokens=24)
    params["evaluate"]["explanation"].update(limit=2)
    params["evaluate"]["explanation"]["decoding"].update(max_new_tokens=16)
    params["compress"].update(prune_sparsity=0.0)  # int8 only: one compressed variant keeps the test short
    return params


def project_copy(dest: Path, params: dict) -> dict[str, str]:
    """A git-committed copy of the repo's code and seeds at `dest` with `params`; the env to run DVC in.
    Its held-out set keeps the first HELDOUT_BASE_PROMPTS base prompts."""
    shutil.copytree(REPO, dest, ignore=SKIP)
    heldout = dest / "data/seed/heldout_prompts.txt"
    heldout.write_text("".join(line + "\n" for line in heldout.read_text().splitlines()[:HELDOUT_BASE_PROMPTS]))
    write_params(dest / "params.yaml", params)
    # No MLFLOW_TRACKING_URI: the default store, mlflow.db at the project root, is what is tested.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", HF_HUB_OFFLINE="1", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               DVC_NO_ANALYTICS="1")  # else every dvc command starts a second interpreter that tries the network
    run(["git", "init", "-q"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-qm", "shrunk copy"], dest, env)
    return env


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def cached_outputs(repo: Path) -> list[str]:
    """Outputs DVC stores, and so the remote's job; `cache: false` metrics, plots and reports live in git."""
    uncached = {path for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values()
                for kind in ("outs", "metrics", "plots") for entry in stage.get(kind, []) if isinstance(entry, dict)
                for path, options in entry.items() if (options or {}).get("cache") is False}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])
            if out["path"] not in uncached]


def file_hashes(repo: Path, paths: list[str]) -> dict[str, str]:
    files = [f for p in paths for f in ([repo / p] if (repo / p).is_file() else sorted((repo / p).rglob("*")))]
    return {str(f.relative_to(repo)): hashlib.md5(f.read_bytes()).hexdigest() for f in files if f.is_file()}
