"""README: any lm-eval task named in `evaluate.lm_eval_tasks` runs on every variant and lands in the report.

The task is lm-eval's own `arc_easy` (a multiple-choice task, scored by log-likelihood, without
the chat template), pointed at a local JSONL through the overrides docs/evaluation.md shows, so
nothing is downloaded. params -> `build_tasks` -> `evaluate_variant` (real lm-eval on the tiny
model, base and a LoRA-adapted "sft") -> what the evaluate stage keeps (`metrics`, `paired_tests`)
-> `write_markdown`, the report stage's renderer, with the committed reports for every other stage.

lm-eval's own `ifeval`, the example docs/evaluation.md gives, shares its name with TuneLab's IFEval
section; it reports beside it, as `lm_eval_ifeval`, not over it (the test at the end).
"""

from __future__ import annotations

import copy
import re

import pytest

from tests.conftest import REPO
from tunelab.core.io import read_json, write_jsonl
from tunelab.eval.evaluate import (
    EvaluateSettings,
    Variant,
    build_tasks,
    evaluate_variant,
    paired_tests,
)
from tunelab.track.report import interval_cell, write_markdown

ARC_ROWS = [
    {"id": "q1", "question": "Which of these is a mammal?", "answerKey": "B",
     "choices": {"text": ["trout", "whale", "sparrow"], "label": ["A", "B", "C"]}},
    {"id": "q2", "question": "What does a plant need to make food?", "answerKey": "A",
     "choices": {"text": ["sunlight", "sand", "salt"], "label": ["A", "B", "C"]}},
    {"id": "q3", "question": "Water turns to ice at what temperature in Celsius?", "answerKey": "C",
     "choices": {"text": ["100", "50", "0"], "label": ["A", "B", "C"]}},
]
IFEVAL_ROW = {"key": 1, "prompt": "Describe a cat in all lowercase letters.",
              "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}
STAGES = ("base", "generate", "curate", "sft", "peft_compare", "preference", "align", "compress", "evaluate")


@pytest.fixture(scope="module")
def random_lora(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter with random (not zero) B matrices: an "sft" variant that answers differently."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("random-lora")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out)
    return out


def test_an_extra_lm_eval_task_runs_on_every_variant_and_lands_in_the_report(
        params_copy, tiny_model_dir, random_lora, tmp_path):
    from tunelab.core.config import load_section

    arc = tmp_path / "arc.jsonl"
    write_jsonl(arc, ARC_ROWS)
    heldout = tmp_path / "ifeval.jsonl"
    write_jsonl(heldout, [IFEVAL_ROW])
    evaluate = params_copy["evaluate"]
    evaluate.update(humaneval_limit=1, batch_size=4, lm_eval_tasks=[{
        "task": "arc_easy", "chat": False,
        "overrides": {"dataset_path": "json", "dataset_name": None,
                      "dataset_kwargs": {"data_files": {"test": str(arc)}},
                      "training_split": None, "validation_split": None, "test_split": "test"}}])
    evaluate["ifeval_sampling"]["max_new_tokens"] = 4
    evaluate["code_sampling"]["max_new_tokens"] = 4
    evaluate["explanation"]["file"] = None  # its own test is tests/eval/test_lmeval.py
    config = load_section(params_copy, "evaluate", EvaluateSettings)  # as stage.load reads it
    tasks = build_tasks(config, str(heldout), str(tiny_model_dir))
    assert [t.task for t in tasks] == ["tunelab_ifeval", "tunelab_humaneval", "arc_easy"]

    results = {"base": evaluate_variant(Variant("base", [], str(tiny_model_dir)), str(tiny_model_dir), tasks, config),
               "sft": evaluate_variant(Variant("sft", [str(random_lora)], str(random_lora)), str(tiny_model_dir),
                                       tasks, config)}
    for name, result in results.items():
        assert "arc_easy" in result["metrics"], f"{name} never ran the extra task: {sorted(result['metrics'])}"
        arc_metrics = result["metrics"]["arc_easy"]
        assert arc_metrics["acc"]["n"] == len(ARC_ROWS), name  # every local row scored, per item
        assert arc_metrics["acc"]["mean"] == pytest.approx(arc_metrics["lm_eval"]["acc"]), name  # lm-eval agrees
        assert len(result["samples"]["arc_easy"]) == len(ARC_ROWS)
        assert result["metrics"]["ifeval"]["prompt_level_loose"]["n"] == 1  # our own sections are still there

    # What the evaluate stage writes into evaluate.json, then the report stage's renderer.
    reports = {name: read_json(REPO / "reports" / f"{name}.json") for name in STAGES}
    reports["evaluate"] = {**copy.deepcopy(reports["evaluate"]), "ifeval_prompts": 1, "humaneval_problems": 1,
                           "variants": {name: result["metrics"] for name, result in results.items()},
                           "comparisons": paired_tests(results, seed=config.seed)}
    report_path = tmp_path / "report.md"
    write_markdown(reports, [], [], report_path)
    report = report_path.read_text()

    further = report.split("### Further lm-eval tasks")[1].split("###")[0]
    assert "| task | metric | base | sft |" in further
    for metric in ("acc", "acc_norm"):
        cells = [interval_cell(results[name]["metrics"]["arc_easy"][metric]) for name in ("base", "sft")]
        assert f"| arc_easy | {metric} | {cells[0]} | {cells[1]} |" in further, further
    differences = report.split("### Differences")[1].split("###")[0]
    assert re.search(r"\| sft vs base \| arc_easy\.acc \| [+-]\d", differences), differences


def test_lm_evals_own_ifeval_as_an_extra_task_keeps_both_ifeval_sections(tiny_model_dir, tmp_path):
    from tunelab.core.models import load_tokenizer, load_variant
    from tunelab.eval.evaluate import Decoding
    from tunelab.eval.lmeval import LmEvalTask, run_tasks, timed_lm

    heldout = tmp_path / "ifeval.jsonl"
    write_jsonl(heldout, [IFEVAL_ROW])
    extra = LmEvalTask("ifeval", {"dataset_path": "json", "dataset_kwargs": {"data_files": {"train": str(heldout)}},
                                  "generation_kwargs": {"until": [], "do_sample": False, "max_gen_toks": 4}})
    config = EvaluateSettings(ifeval_sampling=Decoding(max_new_tokens=4), lm_eval_tasks=[extra])
    tasks = [t for t in build_tasks(config, str(heldout), str(tiny_model_dir)) if t.task != "tunelab_humaneval"]
    lm = timed_lm(load_variant(tiny_model_dir), load_tokenizer(tiny_model_dir), batch_size=4)
    runs = run_tasks(lm, tasks, seed=0)
    assert "prompt_level_loose" in runs["ifeval"].scores, sorted(runs["ifeval"].scores)  # TuneLab's IFEval kept
    assert "prompt_level_loose_acc" in runs["lm_eval_ifeval"].scores  # and lm-eval's ifeval beside it
