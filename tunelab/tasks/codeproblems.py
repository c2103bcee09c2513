"""Code problems for the coding track: loaders, teacher prompts, and sandbox-verified answers.

Every source is normalised to one record, runnable by `tunelab.sandbox` (HumanEval-style:
`prompt` + completion + `test` + `check(entry_point)`):
    task_id, source, difficulty, statement, starter, prompt, entry_point, test, reference,
    slow_reference (repo set only), io_mode ('function' or 'stdin').
Sources (`format`):
- `tunelab`: this repo's problem set (data/seed/code_problems.jsonl).
- `leetcode`: LeetCodeDataset's problem files (newfacade/LeetCodeDataset on the hub).
- `apps`: APPS (codeparrot/apps): `question`, `solutions`, `input_output`, `difficulty`,
  `starter_code`. Call-based problems test a function; standard-input ones run the program on
  each input and compare printed tokens, as APPS's own harness does.
LeetCodeDataset and APPS load through `datasets`: a local JSON/JSONL path, or a hub id (needs
network, so never in the default run).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from tunelab.core.config import ConfigError, check_range
from tunelab.core.io import load_records, read_jsonl
from tunelab.sandbox.harness import check_completion
from tunelab.tasks.humaneval import CODE_BLOCK

STDIN_ENTRY_POINT = "tunelab_stdin_program"
REQUIRED_FIELDS = ("task_id", "statement", "signature", "prompt", "entry_point", "test", "reference", "slow_reference")


@dataclass
class ProblemSource:
    format: Literal["tunelab", "leetcode", "apps"] = "tunelab"
    path: str = "data/seed/code_problems.jsonl"  # a local JSON/JSONL file, or a hub dataset id
    split: str = "train"  # hub datasets only
    limit: int = 0  # first N problems of this source; 0 = all


@dataclass
class CodeSettings:
    count: int = 24  # problems to answer (0 turns the code track off); drawn from the pooled sources
    sources: list[ProblemSource] = field(default_factory=lambda: [ProblemSource()])
    answer: Literal["teacher", "reference"] = "teacher"  # teacher answers (verified) or the reference solution
    verify: bool = True  # run each teacher answer against the problem's tests in the sandbox
    sandbox_timeout_s: float = 10.0
    sandbox_memory_mb: int = 1024

    def __post_init__(self) -> None:
        check_range("generate.code.count", self.count, 0)
        if self.count and not self.sources:
            raise ConfigError("generate.code.sources: at least one problem source is needed when count > 0")


def load_tunelab(path: str) -> list[dict[str, Any]]:
    problems = []
    for number, row in enumerate(read_jsonl(path), start=1):
        missing = [key for key in REQUIRED_FIELDS if not row.get(key) and key != "prompt"]
        if missing:
            raise ValueError(f"{path}: problem {number} lacks {', '.join(missing)}; every problem needs "
                             f"{', '.join(k for k in REQUIRED_FIELDS if k != 'prompt')} (data/seed/code_problems.jsonl "
                             "shows the format); add them or remove the problem")
        problems.append({
            "task_id": row["task_id"], "source": "tunelab", "difficulty": row.get("difficulty", ""),
            "statement": row["statement"], "starter": row["signature"], "prompt": row.get("prompt", ""),
            "entry_point": row["entry_point"], "test": row["test"], "reference": row["reference"],
            "slow_reference": row["slow_reference"], "io_mode": "function",
        })
    return problems


def load_leetcode(path: str, split: str = "train") -> list[dict[str, Any]]:
    problems = []
    for number, row in enumerate(load_records(path, split), start=1):
        meta = row.get("meta") or {}
        if not all(row.get(k) for k in ("task_id", "entry_point", "test")) or not meta.get("question_title"):
            raise ValueError(f"{path}: row {number} is not in LeetCodeDataset format (task_id, entry_point, test, meta)")
        problems.append({
            "task_id": f"leetcode/{row['task_id']}", "source": "leetcode",
            "difficulty": str(meta.get("difficulty", "")).lower(), "statement": meta["question_title"],
            "starter": meta.get("lang_code", ""), "prompt": row.get("prompt", ""),
            "entry_point": row["entry_point"], "test": row["test"], "reference": row.get("completion"),
            "slow_reference": None, "io_mode": "function",
        })
    return problems


def _apps_test(io_spec: dict[str, Any]) -> str:
    cases = json.dumps(list(zip(io_spec["inputs"], io_spec["outputs"])))
    if io_spec.get("fn_name"):
        # APPS stores call-based outputs either bare or wrapped in a one-element list.
        return (f"def check(candidate):\n    import json\n    for args, expected in json.loads({cases!r}):\n"
                "        result = candidate(*args)\n"
                "        assert result == expected or [result] == expected, (args, result, expected)\n")
    return (f"def check(candidate):\n    import json\n    for given, expected in json.loads({cases!r}):\n"
            "        given = '\\n'.join(given) if isinstance(given, list) else given\n"
            "        expected = '\\n'.join(expected) if isinstance(expected, list) else expected\n"
            "        assert candidate(given).split() == expected.split(), (given, expected)\n")


def load_apps(path: str, split: str = "train") -> list[dict[str, Any]]:
    problems = []
    for number, row in enumerate(load_records(path, split), start=1):
        try:
            io_spec = json.loads(row["input_output"]) if row.get("input_output") else None
            solutions = json.loads(row["solutions"]) if row.get("solutions") else []
        except (KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: row {number} is not in APPS format ({err})") from err
        if not row.get("question") or not io_spec or not io_spec.get("inputs"):
            continue  # APPS has problems without tests; they cannot be verified
        fn_name = io_spec.get("fn_name")
        starter = row.get("starter_code") or ""
        entry = STDIN_ENTRY_POINT
        if fn_name:
            entry = f"Solution().{fn_name}" if "class Solution" in starter else fn_name
        problems.append({
            "task_id": f"apps/{row.get('problem_id', number)}", "source": "apps",
            "difficulty": str(row.get("difficulty", "")).lower(), "statement": row["question"],
            "starter": starter, "prompt": "", "entry_point": entry, "test": _apps_test(io_spec),
            "reference": solutions[0] if solutions else None, "slow_reference": None,
            "io_mode": "function" if fn_name else "stdin",
        })
    return problems


LOADERS = {"tunelab": lambda s: load_tunelab(s.path), "leetcode": lambda s: load_leetcode(s.path, s.split),
           "apps": lambda s: load_apps(s.path, s.split)}


def load_sources(sources: list[ProblemSource]) -> list[dict[str, Any]]:
    problems = []
    for source in sources:
        loaded = LOADERS[source.format](source)
        problems.extend(loaded[: source.limit] if source.limit else loaded)
    ids = [p["task_id"] for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError("code problem sources share task_ids; list each source once")
    return problems


def choose(problems: list[dict], count: int, seed: int) -> list[dict]:
    if count > len(problems):
        raise ConfigError(f"generate.code.count: {count} asked, but the sources hold {len(problems)} problems")
    return sorted(random.Random(seed).sample(problems, count), key=lambda p: p["task_id"])


def user_message(problem: dict[str, Any]) -> str:
    how = ("Read the input from standard input and print the answer."
           if problem["io_mode"] == "stdin" else "Complete this code:")
    starter = f"\n```python\n{problem['starter'].rstrip()}\n```" if problem["starter"] else ""
    return (f"Solve the following problem in Python.\n\n{problem['statement'].strip()}\n\n{how}{starter}\n\n"
            "Reply with the complete solution in one ```python code block, then explain it briefly.")


def reference_answer(problem: dict[str, Any]) -> str:
    if not problem.get("reference"):
        raise ValueError(f"{problem['task_id']} has no reference solution; use generate.code.answer: teacher")
    return f"```python\n{problem['reference'].strip()}\n```"


def extract_code(answer: str) -> str:
    match = CODE_BLOCK.search(answer)
    return (match.group(1) if match else answer).strip() + "\n"


def runnable_completion(problem: dict[str, Any], code: str) -> str:
    """Code the sandbox harness can call: a standard-input program becomes a function of its input."""
    if problem["io_mode"] != "stdin":
        return code
    return (
        f"def {STDIN_ENTRY_POINT}(stdin_text):\n"
        "    import contextlib, io, sys\n"
        "    captured, saved = io.StringIO(), sys.stdin\n"
        "    sys.stdin = io.StringIO(stdin_text)\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(captured):\n"
        "            try:\n"
        f"                exec(compile({code!r}, '<solution>', 'exec'), {{'__name__': '__main__'}})\n"
        "            except SystemExit:\n"
        "                pass\n"
        "    finally:\n"
        "        sys.stdin = saved\n"
        "    return captured.getvalue()\n"
    )


def verify(problem: dict[str, Any], answer: str, timeout: float, memory_mb: int) -> dict[str, Any]:
    """Run the answer's code against the problem's tests in the sandbox."""
    completion = runnable_completion(problem, extract_code(answer))
    verdict = check_completion(problem, completion, timeout, memory_mb)
    # No timing here: rows must be identical on a re-run, and wall time is not.
    return {"task_id": problem["task_id"], "passed": verdict["passed"], "status": verdict["status"]}
