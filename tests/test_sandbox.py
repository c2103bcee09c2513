"""The sandbox runs model-written code out of process and does not count cheats as passes."""

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import SHARED_DATA
from tunelab.humaneval import load_humaneval
from tunelab.sandbox import check_completion, check_samples, load_problems, pass_at_1, run_program

PROBLEM = {
    "task_id": "t/0",
    "prompt": "def add(a, b):\n",
    "entry_point": "add",
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
}


def verdict(completion: str, timeout: float = 5.0) -> dict:
    return check_completion(PROBLEM, completion, timeout=timeout, memory_mb=512)


def test_correct_and_wrong_completions():
    assert verdict("    return a + b\n")["status"] == "passed"
    assert verdict("    return a - b\n")["status"] == "failed"
    assert verdict("    return a +\n")["status"] == "failed"


@pytest.mark.parametrize("cheat", [
    "    import sys; sys.exit(0)\n",
    "    import os; os._exit(0)\n",
    "    raise SystemExit(0)\n",
    "import sys\nsys.exit(0)\n",
    "    class Eq:\n        def __eq__(self, other): return True\n    return Eq()\n",
    "    class Int(int):\n        def __eq__(self, other): return True\n    return Int(0)\n",
    "    print('TUNELAB-PASS-0'); return 0\n",
])
def test_cheats_do_not_pass(cheat):
    assert verdict(cheat)["passed"] is False


def test_infinite_loop_times_out_within_budget():
    started = time.monotonic()
    result = verdict("    while True:\n        pass\n", timeout=1.0)
    assert result["status"] == "timeout"
    assert time.monotonic() - started < 1.0 + 2.0


def test_memory_bomb_fails_without_hurting_host():
    result = verdict("    x = bytearray(4 * 1024 ** 3)\n    return a + b\n")
    assert result["status"] == "failed" and "MemoryError" in result["error"]


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("TUNELAB_SECRET_TOKEN", "hunter2")
    result = run_program("import os, sys\nsys.exit(0 if 'TUNELAB_SECRET_TOKEN' in os.environ else 3)\n", timeout=5)
    assert result.returncode == 3


def test_leetcode_reference_solutions_all_pass():
    problems = load_problems(str(SHARED_DATA / "leetcode_problems_sample.jsonl"))
    assert len(problems) == 62
    verdicts = check_samples(problems, [{"task_id": k, "completion": p["completion"]} for k, p in problems.items()])
    assert pass_at_1(verdicts) == 1.0


def test_humaneval_canonical_solutions_pass_in_both_styles_and_stubs_fail():
    problems = load_humaneval()
    assert len(problems) == 164
    by_id = {p["task_id"]: p for p in problems}
    continued = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in problems]
    # A chat answer restates the whole function (and any helpers) after the prompt.
    restated = [{"task_id": p["task_id"], "completion": "\n" + p["prompt"] + p["canonical_solution"]} for p in problems]
    stubs = [{"task_id": p["task_id"], "completion": "    return None\n"} for p in problems[:20]]
    assert pass_at_1(check_samples(by_id, continued)) == 1.0
    assert pass_at_1(check_samples(by_id, restated)) == 1.0
    assert pass_at_1(check_samples(by_id, stubs)) == 0.0


@pytest.mark.parametrize("tamper, message", [
    ("\nListNode.__eq__ = lambda self, other: True\n", "modified the problem's class 'ListNode'"),
    ("\ndef is_same_list(a, b):\n    return True\n", "redefined the problem's 'is_same_list'"),
])
def test_leetcode_harness_helpers_cannot_be_tampered_with(tamper, message):
    problems = load_problems(str(SHARED_DATA / "leetcode_problems_sample.jsonl"))
    linked = next(p for p in problems.values() if "ListNode" in p["completion"])
    assert check_completion(linked, linked["completion"], 5, 512)["passed"]
    result = check_completion(linked, linked["completion"] + tamper, 5, 512)
    assert not result["passed"] and message in result["error"]


def test_command_line_check_and_run(tmp_path):
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps(PROBLEM) + "\n")
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": "t/0", "completion": c}) + "\n"
                               for c in ("    return a + b\n", "    return 0\n")))
    out = tmp_path / "verdicts.jsonl"
    check = subprocess.run([sys.executable, "-m", "tunelab.sandbox", "check", "--problems", str(problems),
                            "--samples", str(samples), "--out", str(out)], capture_output=True, text=True, check=True)
    summary = json.loads(check.stdout.strip().splitlines()[-1])
    assert summary["pass@1"] == 0.5
    assert [json.loads(l)["passed"] for l in out.read_text().splitlines()] == [True, False]

    program = tmp_path / "loop.py"
    program.write_text("while True: pass\n")
    run = subprocess.run([sys.executable, "-m", "tunelab.sandbox", "run", str(program), "--timeout", "1"],
                         capture_output=True, text=True, check=True)
    result = json.loads(run.stdout)
    assert result["status"] == "timeout" and result["runtime_s"] < 3
