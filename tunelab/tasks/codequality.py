"""How good a passing code solution is beyond pass/fail: its speed against the problem's reference
solution, and its PEP 8 findings.

Both are meant for solutions that already pass their tests (a failing one has no runtime worth
comparing). Speed runs in the sandbox, like every run of model-written code; style only
tokenizes and parses the text, so nothing of it executes.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pycodestyle

from tunelab.sandbox.harness import check_completion

# 120, not PEP 8's 79: LeetCode answers are methods of `class Solution`, two or three indents deep,
# with typed signatures (`def longestEqualSubarray(self, nums: List[int], k: int) -> int:`), and
# at 79 line length alone drowns every other finding; 120 is also this repository's own limit.
MAX_LINE_LENGTH = 120

# Every option that changes which findings there are, given explicitly: these override anything a
# user's ~/.config/pycodestyle says, so the same text always gives the same findings.
_STYLE_OPTIONS = {
    "max_line_length": MAX_LINE_LENGTH, "max_doc_length": None, "indent_size": pycodestyle.INDENT_SIZE,
    "hang_closing": False, "select": (), "ignore": tuple(pycodestyle.DEFAULT_IGNORE.split(",")), "quiet": True,
}
_harness_cache: dict[tuple[str, str, int, int], float] = {}


def _cpu_times(problem: dict[str, Any], completion: str, runs: int, calls: int, timeout: float,
               memory_mb: int, copies_only: bool = False) -> tuple[list[float], str]:
    """Kernel CPU seconds of `runs` sandbox runs, and 'passed' or the first failing run's status."""
    times = []
    for _ in range(runs):
        verdict = check_completion(problem, completion, timeout, memory_mb, check_calls=calls, copies_only=copies_only)
        if not verdict["passed"]:
            return times, verdict["status"]
        times.append(verdict["cpu_s"])
    return times, "passed"


def harness_cpu_s(problem: dict[str, Any], reference: str, runs: int = 5, timeout: float = 10.0,
                  memory_mb: int = 1024, calls: int = 1) -> float:
    """Least kernel CPU time, over `runs` runs, of everything in a timed run but the solution's own repeated work:
    interpreter start-up, the problem's prefix, the calls' round trips and the `calls` - 1 copies
    of every call's arguments, with the reference answering each call once. Cached per problem,
    tests and `calls`."""
    key = (problem["prompt"], problem["test"], memory_mb, calls)
    if key not in _harness_cache:
        times, status = _cpu_times(problem, reference, runs, calls, timeout, memory_mb, copies_only=True)
        if status != "passed":
            raise ValueError(f"{problem['task_id']}: the reference solution does not pass ({status})")
        _harness_cache[key] = min(times)
    return _harness_cache[key]


def _calibrate(problem: dict[str, Any], reference: str, target_cpu_s: float, max_check_calls: int,
               timeout: float, memory_mb: int) -> int:
    """How many repeats of each of the tests' calls make the reference's own work take about
    `target_cpu_s` of CPU (LeetCode tests are a few asserts, far cheaper than the interpreter's start-up)."""
    calls = 1
    while True:
        times, status = _cpu_times(problem, reference, 1, calls, timeout, memory_mb)
        if status != "passed":
            raise ValueError(f"{problem['task_id']}: the reference solution does not pass ({status})")
        net = times[0] - harness_cpu_s(problem, reference, 1, timeout, memory_mb, calls)
        if net >= target_cpu_s / 2:  # well above start-up noise (a few ms on a loaded machine) to scale from
            return min(max_check_calls, max(calls, math.ceil(calls * target_cpu_s / net)))
        if calls >= max_check_calls:
            return max_check_calls
        # Grow by the shortfall, but at most tenfold: a small net is mostly noise.
        growth = 10 if net <= 0 else min(10, max(2, math.ceil(target_cpu_s / net)))
        calls = min(max_check_calls, calls * growth)


def runtime_ratio(
    problem: dict[str, Any],
    completion: str,
    reference: str | None = None,
    repeats: int = 5,
    check_calls: int | None = None,
    target_cpu_s: float = 0.1,
    max_check_calls: int = 100_000,
    min_cpu_s: float = 0.002,
    harness_s: float | None = None,
    timeout: float = 10.0,
    memory_mb: int = 1024,
) -> dict[str, Any]:
    """CPU time of `completion` over that of the problem's reference solution, on the same tests.

    Method:
    - Every run is a fresh sandbox process; its time is the kernel's user+system CPU time for it
      (`wait4`), not wall time (which the machine's other load inflates) and nothing the program
      reports.
    - The run's own cost (start-up, the problem's imports, the calls' round trips and the
      copies of their arguments; `harness_cpu_s`, least of `repeats` runs in which the reference
      answers each call once) is subtracted, so none of it pulls the ratio toward 1.
    - Every call the tests make is repeated `check_calls` times in the candidate's process (on
      fresh copies of its arguments; `check_completion`), by default as many times as makes the
      reference take about `target_cpu_s` beyond the harness (at most `max_check_calls`), so the
      solutions' own time stands clear of start-up noise and of the calls' round trips.
    - Candidate and reference runs alternate, `repeats` of each, so a change in the machine's load
      falls on both; the ratio is of the least times of each. Load only ever adds CPU time (other
      processes evict the caches), so the least of several runs is the closest to the work itself;
      a median can sit on an unlucky run, and the subtraction above magnifies it. Net times below
      `min_cpu_s` count as `min_cpu_s`: below that the two cannot be told apart, and their ratio is 1.
    A solution may cache across repeats (`functools.cache`); both sides run under the same rule.

    Returns task_id, status ('measured', or the candidate's failing status: 'failed', 'timeout',
    'error'), ratio (None unless measured; >1 means slower than the reference),
    candidate_cpu_s and reference_cpu_s (net least times), harness_cpu_s, check_calls and repeats.
    Raises ValueError if the reference itself does not pass.
    """
    reference = reference if reference is not None else problem.get("reference") or problem.get("completion")
    if not reference:
        raise ValueError(f"{problem['task_id']}: no reference solution to compare with")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    calls = check_calls if check_calls is not None else _calibrate(problem, reference, target_cpu_s, max_check_calls,
                                                                   timeout, memory_mb)
    harness = harness_s if harness_s is not None else harness_cpu_s(problem, reference, repeats, timeout, memory_mb,
                                                                    calls)
    candidate_times, reference_times, status = [], [], "measured"
    for _ in range(repeats):
        times, reference_status = _cpu_times(problem, reference, 1, calls, timeout, memory_mb)
        if reference_status != "passed":
            raise ValueError(f"{problem['task_id']}: the reference solution does not pass ({reference_status})")
        reference_times += times
        times, candidate_status = _cpu_times(problem, completion, 1, calls, timeout, memory_mb)
        if candidate_status != "passed":
            status = candidate_status
            break
        candidate_times += times
    reference_net = min(reference_times) - harness
    result = {"task_id": problem["task_id"], "status": status, "ratio": None, "candidate_cpu_s": None,
              "reference_cpu_s": round(reference_net, 6),
              "harness_cpu_s": round(harness, 6), "check_calls": calls, "repeats": repeats}
    if status == "measured":
        candidate_net = min(candidate_times) - harness
        result["candidate_cpu_s"] = round(candidate_net, 6)
        result["ratio"] = max(candidate_net, min_cpu_s) / max(reference_net, min_cpu_s)
    return result


def runtime_ratios(
    items: list[tuple[dict[str, Any], str]],
    repeats: int = 5,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 2,
    **options: Any,
) -> list[float | None]:
    """`runtime_ratio` of each (problem, passing completion) against the problem's own reference
    (`reference`, or LeetCodeDataset's `completion`), `workers` at a time; None where the
    completion did not pass again. `options` go to `runtime_ratio`."""
    def one(item: tuple[dict[str, Any], str]) -> float | None:
        problem, completion = item
        return runtime_ratio(problem, completion, repeats=repeats, timeout=timeout, memory_mb=memory_mb,
                             **options)["ratio"]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, items))


class _Findings(pycodestyle.BaseReport):
    """Keeps what pycodestyle finds instead of printing it."""

    def __init__(self, options):
        super().__init__(options)
        self.found: list[tuple[int, int, str, str]] = []

    def error(self, line_number, offset, text, check):
        code = super().error(line_number, offset, text, check)
        if code:
            self.found.append((line_number, offset + 1, code, text[5:]))
        return code


class _Checker(pycodestyle.Checker):
    """A checker for which no line is `# noqa`: the comment must not hide a finding from the metric
    (pycodestyle has no option for this; checks such as E501 and E711 read this attribute)."""

    noqa = property(lambda self: False, lambda self, value: None)


def lint_findings(code: str) -> dict[str, Any]:
    """PEP 8 findings in `code` (pycodestyle's checks and default ignore list, lines up to 120).

    pycodestyle reads the text, tokenizes and parses it; it never runs it, so model output is safe
    here. `# noqa` comments are not honoured. Returns count, lines (physical lines), findings_per_100_lines and codes ({code: count}).
    """
    guide = pycodestyle.StyleGuide(**_STYLE_OPTIONS)
    report = _Findings(guide.options)
    checker = _Checker("<code>", lines=code.splitlines(keepends=True), options=guide.options,
                                  report=report)
    checker.check_all()
    lines = len(code.splitlines())
    codes: dict[str, int] = {}
    for _, _, found, _ in report.found:
        codes[found] = codes.get(found, 0) + 1
    return {
        "count": len(report.found),
        "lines": lines,
        "findings_per_100_lines": round(100 * len(report.found) / lines, 2) if lines else 0.0,
        "codes": dict(sorted(codes.items())),
    }
