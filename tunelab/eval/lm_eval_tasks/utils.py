"""What TuneLab's lm-eval tasks name with `!function utils.X`: their data, prompts and scoring.

Generated code is never executed here: the `*_verdicts` filters send every completion of a task
through `tunelab.sandbox` at once, so the programs run in parallel, and the scores are read
from the verdicts. The evaluate stage overrides the filters' sandbox settings from params
(`functools.partial`); the defaults below serve `lm_eval --include_path tunelab/eval/lm_eval_tasks`.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

# lm-eval imports this file by path; the `lm_eval` command does not put the repo on sys.path.
_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from tunelab.core.io import read_jsonl, require_rows  # noqa: E402
from tunelab.eval.stats import pass_at_k  # noqa: E402
from tunelab.sandbox.harness import check_samples  # noqa: E402
from tunelab.tasks import codeproblems, explanation, humaneval  # noqa: E402
from tunelab.tasks.instructions import score_response, validate_ifeval_rows  # noqa: E402

SANDBOX_DEFAULTS = {"timeout": 10.0, "memory_mb": 1024, "workers": 2}


def _as_dataset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    import datasets

    # Each source row travels as JSON text: IFEval kwargs differ per instruction, and a columnar
    # schema would fill the gaps with None and change what the checkers see.
    return {"test": datasets.Dataset.from_list(docs)}


# ---------------------------------------------------------------- data

def load_ifeval(path: str | None = None, **_: Any) -> dict[str, Any]:
    if not path:
        raise ValueError("tunelab_ifeval needs dataset_kwargs.path: an IFEval-format JSONL")
    rows = validate_ifeval_rows(require_rows(read_jsonl(path), path), path)
    return _as_dataset([{"key": str(r["key"]), "prompt": r["prompt"], "row": json.dumps(r)} for r in rows])


def load_humaneval_docs(path: str | None = None, limit: int = 0, **_: Any) -> dict[str, Any]:
    problems = humaneval.load_humaneval(path, limit=limit or None)
    return _as_dataset([{"task_id": p["task_id"], "prompt": p["prompt"], "row": json.dumps(p)} for p in problems])


def load_leetcode_docs(path: str | None = None, limit: int = 0, **_: Any) -> dict[str, Any]:
    if not path:
        raise ValueError("tunelab_leetcode needs dataset_kwargs.path: a LeetCodeDataset-format JSONL")
    problems = codeproblems.load_leetcode(path)[: limit or None]
    return _as_dataset([
        {"task_id": p["task_id"], "text": codeproblems.user_message(p), "row": json.dumps(p)} for p in problems
    ])


def load_explanation_docs(path: str | None = None, limit: int = 0, **_: Any) -> dict[str, Any]:
    if not path:
        raise ValueError("tunelab_explain needs dataset_kwargs.path: a JSONL of {id, code, references}")
    tasks = explanation.load_explanation_tasks(path, limit)
    return _as_dataset([{"task_id": str(t["id"]), "text": explanation.prompt_text(t["code"]),
                         "row": json.dumps(t)} for t in tasks])


def load_code_pair_docs(path: str | None = None, limit: int = 0, **_: Any) -> dict[str, Any]:
    if not path:
        raise ValueError("tunelab_codepairs needs dataset_kwargs.path: a JSONL of {task_id, prompt, efficient, slow}")
    rows = require_rows(read_jsonl(path, ("task_id", "prompt", "efficient", "slow")), path)
    rows = rows[:limit] if limit else rows
    return _as_dataset([{"task_id": r["task_id"], "text": r["prompt"], "choices": [r["efficient"], r["slow"]]}
                        for r in rows])


def score_code_pair(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, float]:
    """acc 1 when the efficient solution (choice 0) is likelier than the slow one; margin in nats."""
    efficient, slow = (loglikelihood for loglikelihood, _ in results)
    return {"acc": float(efficient > slow), "margin": efficient - slow}


# ---------------------------------------------------------------- prompts

def humaneval_chat_text(doc: dict[str, Any]) -> str:
    return humaneval.CHAT_INSTRUCTION.format(prompt=doc["prompt"])


def humaneval_completion_text(doc: dict[str, Any]) -> str:
    return doc["prompt"]


# ---------------------------------------------------------------- sandbox filters

def _regroup(flat: list[Any], sizes: list[int]) -> list[list[Any]]:
    grouped, start = [], 0
    for size in sizes:
        grouped.append(flat[start:start + size])
        start += size
    return grouped


def humaneval_verdicts(resps: list[list[str]], docs: list[dict[str, Any]], style: str = "chat",
                       **sandbox: Any) -> list[list[dict[str, Any]]]:
    """One sandbox verdict per generated completion, grouped per problem like `resps`."""
    settings = {**SANDBOX_DEFAULTS, **sandbox}
    problems = {d["task_id"]: json.loads(d["row"]) for d in docs}
    samples = [{"task_id": d["task_id"], "completion": humaneval.extract_completion(text, style)}
               for d, texts in zip(docs, resps) for text in texts]
    verdicts = check_samples(problems, samples, **settings)
    for sample, verdict in zip(samples, verdicts):
        verdict["completion"] = sample["completion"]
    return _regroup(verdicts, [len(texts) for texts in resps])


def as_solution_method(problem: dict[str, Any], code: str) -> str:
    """Let a top-level function named like the problem's method stand in for `class Solution`.

    Small chat models often answer "complete `class Solution: def longestEqualSubarray(...)`"
    with a bare `def longestEqualSubarray(...)`. The tests then fail on a NameError, which
    measures formatting rather than the algorithm; binding the function to the class keeps the
    tests exactly as they are. Only an exact name match counts, and code that defines `Solution`
    itself is left alone.
    """
    import ast

    owner, _, method = problem["entry_point"].partition("().")
    if owner != "Solution" or not method:
        return code
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code  # fails in the sandbox with its own SyntaxError, as it should
    defined = {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    function = defined.get(method)
    if "Solution" in defined or not isinstance(function, ast.FunctionDef):
        return code
    takes_self = bool(function.args.args) and function.args.args[0].arg == "self"
    bound = method if takes_self else f"staticmethod({method})"
    return f"{code}\n\nclass Solution:\n    {method} = {bound}\n"


def leetcode_verdicts(resps: list[list[str]], docs: list[dict[str, Any]], quality_repeats: int = 3,
                      **sandbox: Any) -> list[list[dict[str, Any]]]:
    """Sandbox verdicts, plus runtime against the reference and PEP 8 findings when passed."""
    from tunelab.tasks.codequality import lint_findings, runtime_ratios

    settings = {**SANDBOX_DEFAULTS, **sandbox}
    problems = {d["task_id"]: json.loads(d["row"]) for d in docs}
    samples = []
    for doc, texts in zip(docs, resps):
        problem = problems[doc["task_id"]]
        for text in texts:
            code = codeproblems.extract_code(text)
            samples.append({"task_id": doc["task_id"], "code": code,
                            "completion": codeproblems.runnable_completion(problem, as_solution_method(problem, code))})
    verdicts = check_samples(problems, samples, **settings)
    passed = [(problems[s["task_id"]], s["completion"]) for s, v in zip(samples, verdicts) if v["passed"]]
    ratios = iter(runtime_ratios(passed, repeats=quality_repeats, **settings))
    for sample, verdict in zip(samples, verdicts):
        verdict["completion"] = sample["completion"]
        verdict["runtime_ratio"] = next(ratios) if verdict["passed"] else None
        # Style is the model's own code, without the two lines as_solution_method may add.
        verdict["lint"] = lint_findings(sample["code"]) if verdict["passed"] else None
    return _regroup(verdicts, [len(texts) for texts in resps])


# ---------------------------------------------------------------- scores

def score_ifeval(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    scored = score_response(json.loads(doc["row"]), results[0])
    return {
        "prompt_level_strict": float(scored["prompt_strict"]),
        "prompt_level_loose": float(scored["prompt_loose"]),
        "inst_level_strict": [float(v) for v in scored["strict"]],
        "inst_level_loose": [float(v) for v in scored["loose"]],
    }


def score_pass_at_k(doc: dict[str, Any], results: list[list[dict[str, Any]]], ks: tuple[int, ...] = (1, 10)
                    ) -> dict[str, float]:
    """pass@k of one problem from its n verdicts; k larger than n is not estimable and left out."""
    verdicts = results[0]
    n, correct = len(verdicts), sum(v["passed"] for v in verdicts)
    return {f"pass@{k}": pass_at_k(n, correct, k) for k in ks if k <= n}


def score_leetcode(doc: dict[str, Any], results: list[list[dict[str, Any]]]) -> dict[str, Any]:
    verdict = results[0][0]
    lint = verdict["lint"]
    return {
        "pass@1": float(verdict["passed"]),
        "runtime_ratio": verdict["runtime_ratio"],
        "lint_per_100_lines": lint["findings_per_100_lines"] if lint else None,
    }


def score_explanation(doc: dict[str, Any], results: list[str], encoder: str = "models/base",
                      layer: int | None = None) -> dict[str, float]:
    """BLEU, ROUGE-L and BERTScore F1 against the references; `encoder` is BERTScore's model (a local
    directory or a hub id) and `layer` its hidden layer (None: two thirds of its depth)."""
    references = json.loads(doc["row"])["references"]
    return explanation.score_explanation(results[0], references, encoder, explanation.encoder_layer(encoder, layer))


# ---------------------------------------------------------------- aggregations

def mean_of_lists(items: list[list[float]]) -> float:
    """Instruction-level accuracy: every instruction of every prompt counts once."""
    flat = [value for item in items for value in item]
    return sum(flat) / len(flat) if flat else 0.0


def mean_of_present(items: list[float | None]) -> float | None:
    """Quality of passing solutions only: a failed one has no runtime or style to measure."""
    present = [item for item in items if item is not None]
    return statistics.fmean(present) if present else None


def median_of_present(items: list[float | None]) -> float | None:
    present = [item for item in items if item is not None]
    return statistics.median(present) if present else None
