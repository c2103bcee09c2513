"""Speed against the reference, measured by the kernel in the sandbox, and PEP 8 findings on the text."""

import json
import statistics
from concurrent.futures import ThreadPoolExecutor

import pycodestyle
import pytest

from tests.conftest import SHARED_DATA
from tunelab.sandbox.harness import check_completion
from tunelab.tasks.codeproblems import load_leetcode
from tunelab.tasks.codequality import (
    lint_findings,
    runtime_ratio,
    runtime_ratios,
)


@pytest.fixture(scope="module")
def leetcode():
    problems = load_leetcode(str(SHARED_DATA / "leetcode_problems_sample.jsonl"))
    assert len(problems) == 62
    return problems


def slowed_down(problem: dict, times: int = 5) -> str:
    """The reference, made `times` times slower and still correct: it computes each answer `times` times."""
    method = problem["entry_point"].split(".")[-1]
    return (problem["reference"] + f"\n\n_Reference = Solution\n\n\nclass Solution(_Reference):\n"
            f"    def {method}(self, *args, **kwargs):\n        for _ in range({times - 1}):\n"
            f"            super().{method}(*args, **kwargs)\n        return super().{method}(*args, **kwargs)\n")


def test_reference_against_itself_is_one_within_noise(leetcode):
    chosen = leetcode[::8]  # 8 of the 62, spread over the file; all 62 take minutes on 2 cores
    assert len(chosen) == 8
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda p: runtime_ratio(p, p["reference"], p["reference"]), chosen))
    assert [r["status"] for r in results] == ["measured"] * 8
    ratios = sorted(r["ratio"] for r in results)
    # On a shared 2-core VM the least of five runs of identical work still differs between the two
    # sides, now and then by more than half, so each ratio gets a loose bound; a bias that would
    # hide in that noise (a cost counted on one side only) moves the median of all 8, which gets a
    # tight one.
    assert all(0.5 <= ratio <= 2.0 for ratio in ratios), results
    assert 0.8 <= statistics.median(ratios) <= 1.25, results
    # The measured work is the solution's, not start-up: the calibration put it well above noise.
    assert all(r["reference_cpu_s"] > 0.02 and r["check_calls"] > 1 for r in results)


def test_slow_but_correct_solution_has_ratio_well_above_one(leetcode):
    problem = leetcode[0]
    slow = slowed_down(problem)
    assert check_completion(problem, slow, 10, 1024)["passed"]
    result = runtime_ratio(problem, slow, problem["reference"], repeats=3)
    # Five times the work: near 5 once start-up, round trips and argument copies are subtracted.
    # Each side is the least of a few runs on a shared VM, which can be off by half (above), so
    # the bounds only exclude what a broken measurement gives: about 1 (start-up or the harness
    # measured instead of the solution) or far past 5 (a cost subtracted from one side only).
    assert result["status"] == "measured" and 3 < result["ratio"] < 10, result


def test_failing_candidate_gets_no_ratio_and_failing_reference_raises(leetcode):
    problem = leetcode[0]
    method = problem["entry_point"].split(".")[-1]
    wrong = f"class Solution:\n    def {method}(self, *args, **kwargs):\n        return -1\n"
    result = runtime_ratio(problem, wrong, problem["reference"], repeats=1, check_calls=10, harness_s=0.05)
    assert result["status"] == "failed" and result["ratio"] is None
    with pytest.raises(ValueError, match="reference solution does not pass"):
        runtime_ratio(problem, problem["reference"], wrong, repeats=1, check_calls=10, harness_s=0.05)


def test_runtime_ratios_of_raw_leetcode_rows_in_a_batch():
    """LeetCodeDataset rows as they come (the reference is `completion`), as lm-eval's filter passes them."""
    rows = [json.loads(line) for line in (SHARED_DATA / "leetcode_problems_sample.jsonl").read_text().splitlines()]
    problem = rows[0]
    method = problem["entry_point"].split(".")[-1]
    wrong = f"class Solution:\n    def {method}(self, *args, **kwargs):\n        return -1\n"
    ratios = runtime_ratios([(problem, problem["completion"]), (problem, wrong)], repeats=1, check_calls=200)
    assert len(ratios) == 2 and ratios[0] > 0 and ratios[1] is None


BAD = (
    "import os, sys\n"  # E401
    "def f( x ):\n"  # E302, E201, E202
    "    y=x+1\n"  # E225 (x+1 is E226, ignored by default)
    "    return y # noqa\n"  # E261, not hidden by noqa
    "class A:\n"  # E302
    "  pass\n"  # E111
    "print(f(1,2), '" + "x" * 120 + "')\n"  # E305, E231, E501
)


def test_lint_counts_on_a_known_bad_snippet_are_exact():
    findings = lint_findings(BAD)
    assert findings == {
        "count": 11, "lines": 7, "findings_per_100_lines": 157.14,
        "codes": {"E111": 1, "E201": 1, "E202": 1, "E225": 1, "E231": 1, "E261": 1, "E302": 2, "E305": 1,
                  "E401": 1, "E501": 1},
    }
    assert lint_findings("def f(x):\n    return x + 1\n") == {
        "count": 0, "lines": 2, "findings_per_100_lines": 0.0, "codes": {}}
    assert lint_findings("")["findings_per_100_lines"] == 0.0
    assert lint_findings("x = 1\n" + "y = '" + "z" * 110 + "'\n")["count"] == 0  # 116 columns: within 120
    assert lint_findings("if x == None:  # noqa\n    pass\n")["codes"] == {"E711": 1}


def test_lint_ignores_user_config_and_never_runs_the_code(tmp_path, monkeypatch):
    config = tmp_path / "pycodestyle"
    config.write_text("[pycodestyle]\nmax-line-length = 40\nignore = E302,E401\n")
    monkeypatch.setattr(pycodestyle, "USER_CONFIG", str(config))
    assert lint_findings(BAD)["count"] == 11
    marker = tmp_path / "ran"
    assert lint_findings(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(1)\n")["count"] == 0
    assert not marker.exists()


def test_lint_runs_on_every_reference_solution(leetcode):
    results = [lint_findings(p["reference"]) for p in leetcode]
    assert len(results) == 62 and all(r["lines"] > 0 for r in results)
