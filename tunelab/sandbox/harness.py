"""The check program: a problem's tests run against a completion inside the sandbox.

`check_completion` builds one program from a problem (HumanEval or LeetCodeDataset format) and a
completion, runs it through `tunelab.sandbox.runner.run_program`, and reads the verdict from the
exit status and a secret marker the program prints only after every test passed.
"""

from __future__ import annotations

import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tunelab.sandbox.runner import run_program

# The harness wraps the candidate so that what it returns must be built-in data, or instances of
# classes the problem itself defined (LeetCode's ListNode/TreeNode): an object whose __eq__ always
# answers True cannot satisfy `assert candidate(x) == y`. A problem prefix that compiles on its
# own (LeetCodeDataset) runs first; its names are snapshotted and must be untouched by the
# completion, so patching ListNode.__eq__ or a test helper fails the sample.
# It also keeps the completion away from what decides the verdict, as far as code in one process
# can: the tests run in a namespace of their own whose builtins were copied before the completion
# ran (rebinding `abs`, `sorted` or `builtins.len` cannot make a wrong answer pass); its own
# helpers are closures, not globals to patch; and the marker is parked in a pipe while model code
# runs, so no frame holds it. Code that digs deeper (gc, its own file descriptors, ctypes) could
# still find it: see the module docstring.
_HARNESS = '''
def _tunelab_main(prefix, completion, test, entry_point, calls):
    import builtins, os, sys
    from builtins import (bool, bytes, compile, complex, dict, eval, exec, float, frozenset, getattr,
                          hasattr, id, int, isinstance, list, range, set, str, tuple, type, vars,
                          RuntimeError, SyntaxError, TypeError)
    pristine = dict(vars(builtins))
    scalars = (int, float, complex, str, bytes, bool, type(None))
    stdout = sys.stdout

    def park_marker():
        """Read the marker line from stdin into a pipe of our own; return the pipe's read end."""
        read_end, write_end = os.pipe()
        received = b""
        while not received.endswith(b"\\n"):
            chunk = os.read(0, 4096)
            if not chunk:
                break
            received += chunk
        os.write(write_end, received.strip())
        os.close(write_end)
        return read_end

    def check_value(value, trusted):
        stack, seen = [value], set()
        while stack:
            item = stack.pop()
            kind = type(item)
            if kind in scalars:
                continue
            if kind in (list, tuple, set, frozenset):
                stack.extend(item)
            elif kind is dict:
                stack.extend(item.keys())
                stack.extend(item.values())
            elif kind in trusted:
                if id(item) not in seen:
                    seen.add(id(item))
                    stack.extend(vars(item).values())
            else:
                raise TypeError("candidate returned a %r, which is neither built-in data nor a problem type"
                                % kind.__name__)

    def snapshot_of(namespace):
        names = {k: v for k, v in namespace.items() if not k.startswith("__")}
        classes = {k: dict(vars(v)) for k, v in names.items() if isinstance(v, type)}
        return names, classes

    def code_shape(code):
        consts = tuple(code_shape(c) if hasattr(c, "co_code") else c for c in code.co_consts)
        return code.co_code, code.co_names, consts

    def same_function(old, new):
        """A restated helper with the same bytecode (positions aside) is not tampering."""
        code_old, code_new = getattr(old, "__code__", None), getattr(new, "__code__", None)
        return code_old is not None and code_new is not None and code_shape(code_old) == code_shape(code_new)

    def untouched(namespace, snapshot, entry_name):
        names, classes = snapshot
        for key, value in names.items():
            current = namespace.get(key)
            if key == entry_name or current is value and key not in classes:
                continue
            restated_constant = type(current) is type(value) and type(value) in scalars and current == value
            if current is not value and not restated_constant and not same_function(value, current):
                raise RuntimeError("the completion redefined the problem's %r" % key)
            if key in classes and dict(vars(value)) != classes[key]:
                raise RuntimeError("the completion modified the problem's class %r" % key)

    parked = park_marker()
    # `base` holds what the problem itself defines; the completion runs in a copy of it and the
    # tests in another, so nothing the completion binds is seen by the tests.
    base = {"__name__": "__candidate__", "__builtins__": pristine}
    try:
        completion_code = compile(completion, "solution.py", "exec")
        prefix_code = compile(prefix, "problem.py", "exec")
    except SyntaxError:
        completion_code = None  # HumanEval style: the completion finishes the prompt's function
    snapshot, trusted = ({}, {}), set()
    if completion_code is None:
        try:
            exec(compile(prefix, "problem.py", "exec"), base)  # the prompt's helpers, for the tests
        except SyntaxError:
            pass
        namespace = dict(base, __builtins__=builtins)
        exec(compile(prefix + completion, "solution.py", "exec"), namespace)
    else:
        exec(prefix_code, base)
        snapshot = snapshot_of(base)
        trusted = {v for v in snapshot[0].values() if isinstance(v, type)}
        namespace = dict(base, __builtins__=builtins)
        exec(completion_code, namespace)
    tests = dict(base, __builtins__=dict(pristine))
    exec(compile(test, "test.py", "exec"), tests)
    entry_name = entry_point.split("(")[0].split(".")[0]
    if entry_name in namespace:  # a test may call the solution by its name (HumanEval/33 does)
        tests[entry_name] = namespace[entry_name]
    check = tests["check"]
    candidate = eval(entry_point, namespace)

    def guarded(*args, **kwargs):
        result = candidate(*args, **kwargs)
        check_value(result, trusted)
        return result

    for _ in range(calls):
        check(guarded)
    untouched(namespace, snapshot, entry_name)
    stdout.flush()
    os.write(1, b"\\n" + os.read(parked, 4096) + b"\\n")

_tunelab_main(@PREFIX@, @COMPLETION@, @TEST@, @ENTRY_POINT@, @CALLS@)
'''


def build_check_program(problem: dict[str, Any], completion: str, check_calls: int = 1) -> str:
    """A program that runs `problem`'s tests against `completion` (HumanEval or LeetCodeDataset),
    calling the tests' `check` `check_calls` times (more than once only to time the solution)."""
    if check_calls < 1:
        raise ValueError(f"check_calls must be at least 1, not {check_calls}")
    values = {"PREFIX": repr(problem["prompt"]), "COMPLETION": repr(completion), "TEST": repr(problem["test"]),
              "ENTRY_POINT": repr(problem["entry_point"]), "CALLS": str(int(check_calls))}
    # One pass, so a completion that contains '@TEST@' is not spliced into.
    return re.sub(r"@(PREFIX|COMPLETION|TEST|ENTRY_POINT|CALLS)@", lambda m: values[m.group(1)], _HARNESS)


def check_completion(problem: dict[str, Any], completion: str, timeout: float, memory_mb: int,
                     check_calls: int = 1) -> dict:
    """One verdict row: task_id, passed, status, runtime_s (wall), cpu_s (kernel), network_isolated, error."""
    # The marker travels on stdin and is never in the program text, so the solution cannot print
    # it without reading the harness's own frame.
    marker = "TUNELAB-PASS-" + secrets.token_hex(16)
    result = run_program(build_check_program(problem, completion, check_calls), timeout, memory_mb,
                         stdin_text=marker + "\n", pass_marker=marker)
    return {
        "task_id": problem["task_id"],
        "passed": result.status == "passed",
        "status": result.status,
        "runtime_s": round(result.runtime_s, 4),
        "cpu_s": round(result.cpu_s, 4),
        "network_isolated": result.network_isolated,
        "error": result.stderr.strip().splitlines()[-1] if result.status != "passed" and result.stderr.strip() else "",
    }


def check_samples(
    problems: dict[str, dict[str, Any]],
    samples: list[dict[str, Any]],
    timeout: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 2,
) -> list[dict[str, Any]]:
    """Verdict rows in sample order; each sample is {'task_id', 'completion'}."""
    for sample in samples:
        if sample.get("task_id") not in problems:
            raise ValueError(f"sample names unknown task_id {sample.get('task_id')!r}")

    def one(sample: dict[str, Any]) -> dict[str, Any]:
        return check_completion(problems[sample["task_id"]], sample["completion"], timeout, memory_mb)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, samples))


def pass_at_1(verdicts: list[dict[str, Any]]) -> float:
    """Mean over tasks of the fraction of that task's samples that passed."""
    by_task: dict[str, list[bool]] = {}
    for verdict in verdicts:
        by_task.setdefault(verdict["task_id"], []).append(verdict["passed"])
    if not by_task:
        return 0.0
    return sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)


def load_problems(path: str) -> dict[str, dict[str, Any]]:
    """Problems keyed by task_id, from a HumanEval-format or LeetCodeDataset-format JSONL(.gz)."""
    import gzip
    import json

    opener = gzip.open if str(path).endswith(".gz") else open
    problems = {}
    with opener(path, "rt") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in ("task_id", "prompt", "entry_point", "test") if k not in row]
            if missing:
                raise ValueError(f"{path}:{number}: problem lacks {', '.join(missing)}")
            problems[row["task_id"]] = row
    if not problems:
        raise ValueError(f"{path} holds no problems")
    return problems
