"""The code explanation task: its snippets, their loader's errors, and what each score rewards.

Scores come from sacrebleu, rouge-score and bert-score; BERTScore runs on the tiny random Llama
(a real encoder forward pass, meaningless embeddings), so only properties that hold for any
encoder are checked: an answer equal to a reference scores 1, the best reference counts, and an
empty answer scores 0. BLEU and ROUGE-L are also checked against hand-worked cases.
"""

from __future__ import annotations

import ast
import json

import pytest

from tests.conftest import REPO
from tunelab.tasks.codeproblems import load_tunelab
from tunelab.tasks.explanation import (
    encoder_layer,
    load_explanation_tasks,
    prompt_text,
    score_explanation,
)

TASKS = REPO / "data/seed/explanation_tasks.jsonl"
REFERENCES = ["The function returns the sum of the squares of the even numbers in the list.",
              "It adds up x times x for every even x in xs and returns the total."]


def test_the_task_set_is_many_varied_runnable_snippets_with_references():
    tasks = load_explanation_tasks(str(TASKS))
    assert len(tasks) >= 40 and len({t["id"] for t in tasks}) == len(tasks)
    for task in tasks:
        ast.parse(task["code"])  # each snippet is valid Python
        assert 1 <= len(task["references"]) <= 2
        assert all(20 <= len(reference.split()) <= 100 for reference in task["references"]), task["id"]
    assert sum(len(t["references"]) == 2 for t in tasks) >= 20
    assert load_explanation_tasks(str(TASKS), limit=3) == tasks[:3]


def test_the_task_set_shares_no_code_with_the_training_problems():
    solutions = [" ".join(p[key].split()) for p in load_tunelab(str(REPO / "data/seed/code_problems.jsonl"))
                 for key in ("reference", "slow_reference")]
    for task in load_explanation_tasks(str(TASKS)):
        code = " ".join(task["code"].split())
        assert not any(code in solution or solution in code for solution in solutions), task["id"]


@pytest.mark.parametrize(("row", "complaint"), [
    ({"id": "a", "code": "x = 1"}, "references"),
    ({"id": "a", "code": "x = 1", "references": []}, "references"),
    ({"id": "a", "code": "x = 1", "references": ["  "]}, "references"),
    ({"id": "a", "code": "", "references": ["Sets x."]}, "non-empty `code`"),
    ({"code": "x = 1", "references": ["Sets x."]}, "`id`"),
])
def test_a_bad_task_row_is_named_with_its_line(tmp_path, row, complaint):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"id": "ok", "code": "y = 2", "references": ["Sets y to two."]}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"line 2.*{complaint}"):
        load_explanation_tasks(str(path))


def test_the_prompt_asks_for_an_explanation_of_the_code_block():
    assert prompt_text("x = 1\n") == "Explain what this Python code does.\n\n```python\nx = 1\n```"


def test_a_reference_answer_scores_one_and_the_best_reference_counts(tiny_model_dir):
    encoder = str(tiny_model_dir)
    layer = encoder_layer(encoder, None)
    assert layer == 1  # two thirds of the tiny model's 2 layers
    for reference in REFERENCES:  # the second reference counts as much as the first
        scores = score_explanation(reference, REFERENCES, encoder, layer)
        assert scores["bleu"] == pytest.approx(1.0) and scores["rougeL"] == pytest.approx(1.0)
        assert scores["bertscore_f1"] == pytest.approx(1.0, abs=1e-5)


def test_scores_fall_with_overlap(tiny_model_dir):
    encoder = str(tiny_model_dir)
    close = score_explanation("The function returns the sum of squares of the even numbers.", REFERENCES, encoder, 1)
    unrelated = score_explanation("Rain is expected over hills tomorrow afternoon.", REFERENCES, encoder, 1)
    assert 0.2 < close["bleu"] < 1 and unrelated["bleu"] < 0.05
    # ROUGE-L F by hand: all 11 words of the closer answer are a common subsequence of the first
    # reference's 15, so P = 1, R = 11/15, F = 2PR / (P + R) = 22/26.
    assert close["rougeL"] == pytest.approx(22 / 26)
    assert unrelated["rougeL"] == 0.0
    assert score_explanation("   ", REFERENCES, encoder, 1) == {"bleu": 0.0, "rougeL": 0.0, "bertscore_f1": 0.0}


def test_a_layer_outside_the_encoder_fails_naming_the_range(tiny_model_dir):
    with pytest.raises(ValueError, match=r"outside 1\.\.2"):
        encoder_layer(str(tiny_model_dir), 3)
