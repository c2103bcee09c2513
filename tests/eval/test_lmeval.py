"""The lm-eval path: TuneLab's include_path tasks and a built-in lm-eval task, on a tiny model.

The tiny random model scores 0 on everything, so scoring itself is checked by handing the
tasks' filters and scorers known-good and known-bad answers (HumanEval canonical solutions,
LeetCode reference solutions, IFEval-satisfying text).
"""

from __future__ import annotations

import functools
import json

import pytest

from tests.conftest import REPO, SHARED_DATA
from tunelab.core.io import write_jsonl
from tunelab.eval.evaluate import (
    Decoding,
    EvaluateSettings,
    ExplanationEval,
    LeetCodeEval,
    PassAtK,
    build_tasks,
)
from tunelab.eval.lm_eval_tasks import utils
from tunelab.eval.lmeval import LmEvalTask, run_tasks, timed_lm
from tunelab.tasks.humaneval import load_humaneval

LEETCODE = SHARED_DATA / "leetcode_problems_sample.jsonl"
SHORT = Decoding(max_new_tokens=8)

IFEVAL_ROWS = [
    {"key": 1, "prompt": "Describe a cat. Your entire response should be in English, and in all lowercase letters.",
     "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
    {"key": 2, "prompt": "Describe a dog. Do not include the word 'bark'.",
     "instruction_id_list": ["keywords:forbidden_words"], "kwargs": [{"forbidden_words": ["bark"]}]},
]


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from tunelab.core.models import load_tokenizer, load_variant

    return timed_lm(load_variant(tiny_model_dir), load_tokenizer(tiny_model_dir), batch_size=4)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    path = tmp_path_factory.mktemp("heldout") / "heldout.jsonl"
    write_jsonl(path, IFEVAL_ROWS)
    return path


def test_our_tasks_run_through_lm_eval_and_keep_per_item_scores(tiny_lm, heldout, tiny_model_dir):
    config = EvaluateSettings(
        humaneval_limit=2, ifeval_sampling=SHORT, code_sampling=SHORT, batch_size=4,
        pass_at_k=PassAtK(samples=2, k=[1, 2], decoding=Decoding(max_new_tokens=8, temperature=0.8, top_p=0.95)),
        leetcode=LeetCodeEval(file=str(LEETCODE), limit=2, quality_repeats=1, decoding=SHORT),
        explanation=ExplanationEval(file=str(REPO / "data/seed/explanation_tasks.jsonl"), limit=2, decoding=SHORT),
    )
    runs = run_tasks(tiny_lm, build_tasks(config, str(heldout), str(tiny_model_dir)), seed=0)

    assert sorted(runs) == ["explanation", "humaneval", "humaneval_sampled", "ifeval", "leetcode"]
    ifeval = runs["ifeval"]
    assert len(ifeval.scores["prompt_level_loose"]) == 2
    assert [len(v) for v in ifeval.scores["inst_level_strict"]] == [1, 1]
    assert ifeval.aggregate["prompt_level_strict,none"] == sum(ifeval.scores["prompt_level_strict"]) / 2
    assert runs["humaneval"].scores["pass@1"] == [0.0, 0.0]  # random weights write no working code
    sampled = runs["humaneval_sampled"]
    assert set(sampled.scores) == {"pass@1", "pass@2"}
    assert [len(s["resps"][0]) for s in sampled.samples] == [2, 2]  # n completions per problem
    leetcode = runs["leetcode"]
    assert leetcode.scores["pass@1"] == [0.0, 0.0]
    assert leetcode.scores["runtime_ratio"] == [None, None]  # measured on passing solutions only
    explained = runs["explanation"]
    assert set(explained.scores) == {"bleu", "rougeL", "bertscore_f1"}
    assert all(len(values) == 2 and all(0 <= v <= 1 for v in values) for values in explained.scores.values())
    assert [s["doc"]["task_id"] for s in explained.samples] == ["explain/001", "explain/002"]
    assert tiny_lm.new_tokens > 0 and tiny_lm.seconds > 0


def test_a_builtin_lm_eval_task_runs_on_a_local_file(tiny_lm, tmp_path):
    """lm-eval's own `ifeval` task, pointed at a local file of the same schema (no hub)."""
    data = tmp_path / "input_data.jsonl"
    write_jsonl(data, IFEVAL_ROWS)
    task = LmEvalTask("ifeval", {"dataset_path": "json", "dataset_kwargs": {"data_files": {"train": str(data)}},
                                 "generation_kwargs": {"until": [], "do_sample": False, "max_gen_toks": 8}})
    runs = run_tasks(tiny_lm, [task], seed=0)
    assert len(runs["lm_eval_ifeval"].scores["prompt_level_strict_acc"]) == 2


def test_unknown_task_fails_naming_it(tiny_lm):
    from tunelab.core.config import ConfigError

    with pytest.raises(ConfigError, match="no_such_task"):
        run_tasks(tiny_lm, [LmEvalTask("no_such_task")], seed=0)


def test_humaneval_filter_passes_canonical_and_fails_wrong_solutions():
    problems = load_humaneval(limit=5)
    docs = [{"task_id": p["task_id"], "prompt": p["prompt"], "row": json.dumps(p)} for p in problems]
    canonical = [[p["prompt"] + p["canonical_solution"]] for p in problems]  # a chat answer restates it all
    wrong = [["```python\n" + p["prompt"] + "    return None\n```"] for p in problems]
    verdicts = utils.humaneval_verdicts(canonical + wrong, docs + docs, style="chat")
    scores = [utils.score_pass_at_k(d, [v])["pass@1"] for d, v in zip(docs + docs, verdicts)]
    assert scores == [1.0] * 5 + [0.0] * 5


def test_leetcode_filter_measures_quality_of_passing_solutions():
    rows = [json.loads(line) for line in LEETCODE.read_text().splitlines()[:3]]
    docs = utils.load_leetcode_docs(str(LEETCODE), limit=3)["test"]
    answers = [[f"Here it is:\n```python\n{row['completion']}```"] for row in rows]
    verdicts = utils.leetcode_verdicts(answers, list(docs), quality_repeats=1)
    scores = [utils.score_leetcode(d, [v]) for d, v in zip(docs, verdicts)]
    assert [s["pass@1"] for s in scores] == [1.0, 1.0, 1.0]
    assert all(s["runtime_ratio"] > 0 and s["lint_per_100_lines"] >= 0 for s in scores)


def test_ifeval_scorer_reads_strict_and_loose():
    doc = {"row": json.dumps(IFEVAL_ROWS[0])}
    assert utils.score_ifeval(doc, ["the quiet cat sleeps on the warm window sill all day and purrs softly when someone walks by."])["prompt_level_strict"] == 1.0
    assert utils.score_ifeval(doc, ["A Loud Cat."])["prompt_level_strict"] == 0.0


def test_pass_at_k_metric_list_follows_params():
    config = EvaluateSettings(pass_at_k=PassAtK(samples=4, k=[1, 4]))
    sampled = next(t for t in build_tasks(config, "x.jsonl", "models/base") if t.task == "tunelab_humaneval_sampled")
    assert sampled.overrides["repeats"] == 4
    assert [m["metric"] for m in sampled.overrides["metric_list"]] == ["pass@1", "pass@4"]
    assert isinstance(sampled.overrides["process_results"], functools.partial)


@pytest.mark.parametrize("answer, passes", [
    ("def add(a, b):\n    return a + b\n", True),  # the bare function the model often writes
    ("def add(self, a, b):\n    return a + b\n", True),  # ...sometimes keeping `self`
    ("def add(a, b):\n    return a - b\n", False),  # a wrong algorithm still fails the same tests
    ("def plus(a, b):\n    return a + b\n", False),  # another name is not the method asked for
    ("class Solution:\n    def add(self, a, b):\n        return a + b\n", True),  # left as written
])
def test_bare_function_named_like_the_method_stands_in_for_the_class(answer, passes):
    from tunelab.sandbox.harness import check_completion

    problem = {"task_id": "leetcode/add", "prompt": "", "entry_point": "Solution().add", "io_mode": "function",
               "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}
    verdict = check_completion(problem, utils.as_solution_method(problem, answer), timeout=10.0, memory_mb=1024)
    assert verdict["passed"] is passes


def test_fast_generation_matches_lm_eval_loop_on_greedy_requests(tiny_lm):
    """The decoder lm-eval's requests go through gives the wrapper's own greedy texts, cut at `until`."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from tunelab.core.generation import chat_prompt

    prompts = [chat_prompt(tiny_lm.tokenizer, text) for text in ("Describe a cat.", "Name three rivers in Europe.",
                                                                  "Write a haiku about rain.")]
    kwargs = {"until": ["the"], "do_sample": False, "max_gen_toks": 12, "repetition_penalty": 1.1}
    requests = [Instance("generate_until", {}, (prompt, dict(kwargs)), i) for i, prompt in enumerate(prompts)]
    ours = tiny_lm.generate_until(requests)
    theirs = HFLM.generate_until(tiny_lm, requests)
    assert ours == theirs and any(ours)


def test_unsupported_generation_kwargs_take_lm_evals_loop(tiny_lm, monkeypatch):
    from lm_eval.api.instance import Instance

    from tunelab.eval import lmeval

    monkeypatch.setattr(lmeval, "generate_for_requests", lambda *a: pytest.fail("fast path used for top_k"))
    request = Instance("generate_until", {}, ("Hello", {"until": [], "do_sample": False, "max_gen_toks": 4,
                                                       "top_k": 5}), 0)
    assert len(tiny_lm.generate_until([request])) == 1


def test_our_code_block_kwarg_stays_out_of_lm_evals_loop(tiny_lm, monkeypatch):
    """A request with an unsupported kwarg takes lm-eval's loop, which would pass
    stop_after_code_block on to generate (an error there): it is dropped, the request kept as it was."""
    from lm_eval.api.instance import Instance

    from tunelab.eval import lmeval

    monkeypatch.setattr(lmeval, "generate_for_requests", lambda *a: pytest.fail("fast path used for top_k"))
    kwargs = {"until": [], "do_sample": False, "max_gen_toks": 4, "top_k": 5, "stop_after_code_block": True}
    request = Instance("generate_until", {}, ("Hello", dict(kwargs)), 0)
    assert len(tiny_lm.generate_until([request])) == 1
    assert request.args[1] == kwargs  # lm-eval logs the request's own arguments


def test_code_pair_task_scores_the_log_likelihood_margin_of_efficient_over_slow(tiny_lm, tiny_model_dir, tmp_path):
    """tunelab_codepairs through lm-eval, against the same log-likelihoods summed by hand from the
    model's own logits after the chat-templated prompt."""
    import torch

    from tunelab.core.generation import chat_prompt
    from tunelab.core.models import load_tokenizer, load_variant

    rows = [{"task_id": "t/1", "prompt": "Sum a list.", "efficient": "```python\nsum(xs)\n```",
             "slow": "```python\ntotal = 0\nfor x in xs:\n    total = total + x\n```"},
            {"task_id": "t/2", "prompt": "Reverse a list.", "efficient": "```python\nxs[::-1]\n```",
             "slow": "```python\n[xs[len(xs) - 1 - i] for i in range(len(xs))]\n```"}]
    path = tmp_path / "code_pairs.jsonl"
    write_jsonl(path, rows)
    tasks = [t for t in build_tasks(EvaluateSettings(), "x.jsonl", str(tiny_model_dir), str(path))
             if t.task == "tunelab_codepairs"]
    run = run_tasks(tiny_lm, tasks, seed=0)["code_pairs"]

    tokenizer, model = load_tokenizer(tiny_model_dir), load_variant(tiny_model_dir)

    def loglikelihood(prompt: str, answer: str) -> float:
        context = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        whole = tokenizer(chat_prompt(tokenizer, prompt) + answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([whole])).logits[0].log_softmax(-1)
        return sum(logits[i - 1, whole[i]].item() for i in range(len(context), len(whole)))

    margins = [loglikelihood(r["prompt"], r["efficient"]) - loglikelihood(r["prompt"], r["slow"]) for r in rows]
    assert run.scores["margin"] == pytest.approx(margins, abs=1e-3)
    assert run.scores["acc"] == [float(m > 0) for m in margins]
    assert [s["doc"]["task_id"] for s in run.samples] == ["t/1", "t/2"]
    assert not [t for t in build_tasks(EvaluateSettings(code_pairs=False), "x.jsonl", "m", str(path))
                if t.task == "tunelab_codepairs"]
