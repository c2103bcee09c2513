"""Data sources: the repo's code problems and seed tasks, and loaders for LeetCodeDataset, APPS,
Alpaca and ShareGPT files (local files in each schema; the hub path is the same code)."""

from __future__ import annotations

import json
import random

import pytest
from rouge_score import rouge_scorer

from tests.conftest import REPO, SHARED_DATA
from tunelab.sandbox.harness import check_samples
from tunelab.synth import selfinstruct
from tunelab.synth.chatdata import ImportSpec, load_import
from tunelab.tasks import codeproblems

DATA = REPO / "tests" / "data"
PROBLEMS = REPO / "data" / "seed" / "code_problems.jsonl"


@pytest.fixture(scope="module")
def repo_problems() -> list[dict]:
    return codeproblems.load_tunelab(str(PROBLEMS))


def test_repo_problem_set_is_complete(repo_problems):
    assert len(repo_problems) >= 60
    assert len({p["task_id"] for p in repo_problems}) == len(repo_problems)
    assert {p["difficulty"] for p in repo_problems} == {"easy", "medium", "hard"}
    for problem in repo_problems:
        assert problem["starter"].startswith(f"def {problem['entry_point']}(")
        assert problem["test"].count("assert") >= 6
        assert len(problem["statement"].split()) >= 40


def test_both_solutions_pass_and_the_slow_one_is_slower(repo_problems):
    """Every reference and every correct-but-slow solution passes its tests in the sandbox."""
    problems = {p["task_id"]: p for p in repo_problems}
    fast = check_samples(problems, [{"task_id": t, "completion": p["reference"]} for t, p in problems.items()])
    slow = check_samples(problems, [{"task_id": t, "completion": p["slow_reference"]} for t, p in problems.items()])
    failures = [(v["task_id"], v["status"], v["error"]) for v in fast + slow if not v["passed"]]
    assert not failures
    # Runtimes include interpreter start-up, so compare totals: the slow set is clearly slower.
    assert sum(v["runtime_s"] for v in slow) > 2 * sum(v["runtime_s"] for v in fast)


def test_a_stub_fails_every_repo_problem(repo_problems):
    problems = {p["task_id"]: p for p in repo_problems[:12]}
    stubs = [{"task_id": t, "completion": f"def {p['entry_point']}(*args, **kwargs):\n    return None\n"}
             for t, p in problems.items()]
    assert not any(v["passed"] for v in check_samples(problems, stubs))


def test_teacher_answer_is_extracted_and_verified(repo_problems):
    problem = repo_problems[0]
    chat_answer = f"Here is my solution.\n\n```python\n{problem['reference']}```\n\nIt runs in linear time."
    assert codeproblems.verify(problem, chat_answer, 10, 1024)["passed"]
    assert not codeproblems.verify(problem, "I do not know.", 10, 1024)["passed"]
    message = codeproblems.user_message(problem)
    assert problem["statement"].strip() in message and problem["starter"] in message


def test_leetcode_loader_reads_the_problem_file_format():
    problems = codeproblems.load_leetcode(str(SHARED_DATA / "leetcode_problems_sample.jsonl"))
    assert len(problems) == 62
    first = problems[0]
    assert first["task_id"].startswith("leetcode/") and first["entry_point"].startswith("Solution().")
    assert first["starter"].startswith("class Solution:") and len(first["statement"]) > 100
    for problem in random.Random(0).sample(problems, 6):
        assert codeproblems.verify(problem, codeproblems.reference_answer(problem), 10, 1024)["passed"], problem["task_id"]


def test_apps_loader_handles_stdin_and_call_based_problems():
    problems = {p["task_id"]: p for p in codeproblems.load_apps(str(DATA / "apps_sample.jsonl"))}
    assert sorted(problems) == ["apps/9001", "apps/9002", "apps/9003"]  # 9004 has no tests
    assert problems["apps/9001"]["io_mode"] == "stdin"
    assert problems["apps/9003"]["entry_point"] == "Solution().countVowels"
    for problem in problems.values():
        assert codeproblems.verify(problem, codeproblems.reference_answer(problem), 10, 1024)["passed"], problem["task_id"]
    wrong = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
    assert not codeproblems.verify(problems["apps/9001"], wrong, 10, 1024)["passed"]
    exits_early = "```python\nimport sys\na, b = map(int, input().split())\nprint(a + b)\nsys.exit(0)\n```"
    assert codeproblems.verify(problems["apps/9001"], exits_early, 10, 1024)["passed"]


def test_missing_and_malformed_sources_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        codeproblems.load_leetcode(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "x", "prompt": ""}) + "\n")
    with pytest.raises(ValueError, match="not in LeetCodeDataset format"):
        codeproblems.load_leetcode(str(bad))
    with pytest.raises(ValueError, match="sources hold 3 problems"):
        codeproblems.choose([{"task_id": str(i)} for i in range(3)], 5, 0)


def test_alpaca_and_sharegpt_imports():
    alpaca = load_import(ImportSpec(format="alpaca", path=str(DATA / "alpaca_sample.json")), 0)
    assert alpaca[1]["messages"][0]["content"].startswith("Summarise the text in one sentence.\n\nThe library")
    sharegpt = load_import(ImportSpec(format="sharegpt", path=str(DATA / "sharegpt_sample.json"), limit=1), 1)
    assert len(sharegpt) == 1 and sharegpt[0]["messages"][0] == {"role": "system", "content": "You are a concise assistant."}


def test_import_with_a_bad_row_names_it(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi!"}, {"instruction": "No answer"}]))
    with pytest.raises(ValueError, match="row 2: an Alpaca row needs"):
        load_import(ImportSpec(format="alpaca", path=str(path)), 0)


def test_seed_tasks_are_many_and_varied():
    tasks = selfinstruct.load_seed_tasks(REPO / "data" / "seed" / "self_instruct_seed_tasks.jsonl")
    assert len(tasks) >= 40
    assert sum(bool(t["input"]) for t in tasks) >= 10
    pool = selfinstruct.RougePool([t["instruction"] for t in tasks[1:]])
    assert pool.max_similarity(tasks[0]["instruction"]) < 0.5


def test_self_instruct_prompt_parse_and_filters(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    examples = [{"instruction": "Name three birds.", "input": ""}, {"instruction": "Fix the bug.", "input": "x = 1 +"}]
    prompt = selfinstruct.build_prompt(tokenizer, examples)
    assert prompt.endswith("Task 2: Fix the bug.\nInput: x = 1 +\n\nTask 3:")
    assert "<|im_start|>assistant\n" in prompt

    parsed = selfinstruct.parse_task(" Translate the sentence into French.\nInput: I like tea.\n\nTask 4: more")
    assert parsed == {"instruction": "Translate the sentence into French.", "input": "I like tea."}
    assert selfinstruct.parse_task(" Tell a joke.\nInput: <noinput>") == {"instruction": "Tell a joke.", "input": ""}

    config = selfinstruct.SelfInstructSettings()
    pool = selfinstruct.RougePool(["Write a short poem about the sea."])
    reason = lambda text: selfinstruct.rejection_reason({"instruction": text, "input": ""}, pool, config)  # noqa: E731
    assert reason("Write a short poem about the sea at night.") == "rouge_l_similar"
    assert reason("Draw a picture of a cat.") == "unsuitable_for_text_model"
    assert reason("Hi there") == "too_short"
    assert reason("Explain why the sky looks blue at noon.") is None


def test_rouge_pool_matches_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    texts = ["Write a poem about cats.", "List the planets in order.", "Explain photosynthesis simply."]
    pool = selfinstruct.RougePool(texts)
    candidate = "Write a short poem about dogs."
    expected = max(scorer.score(t, candidate)["rougeL"].fmeasure for t in texts)
    assert pool.max_similarity(candidate) == pytest.approx(expected)
