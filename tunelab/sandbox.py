"""Run untrusted (model-written) Python in a separate, resource-limited process.

Never `exec` model output in the evaluating process: everything goes through `run_program`,
which starts a fresh `python -I` in its own session and temporary directory, with a scrubbed
environment and rlimits on CPU time, address space, file size and open files, and kills the
whole process group on timeout.

What this promises: a program cannot outlive its timeout, exhaust the host's memory through
its own address space, write files larger than the limit, read the caller's environment
secrets, or forge a pass by exiting early or by returning an object that merely claims equality.
What it does not promise: filesystem or network isolation (a process running as the same user
can still read and write what that user can). Run under nsjail/bubblewrap for that.

Command line (usable outside the pipeline):
    python -m tunelab.sandbox run PROGRAM.py [--timeout S] [--memory-mb M]
    python -m tunelab.sandbox check --problems P.jsonl --samples S.jsonl [--out R.jsonl]
"""

from __future__ import annotations

import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

OUTPUT_LIMIT_BYTES = 1 << 20  # keep at most 1 MiB of a program's output


@dataclass
class SandboxResult:
    status: str  # passed | failed | timeout | error
    runtime_s: float
    returncode: int | None
    stdout: str
    stderr: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "runtime_s": round(self.runtime_s, 4),
            "returncode": self.returncode,
            "stdout": self.stdout[-2000:],
            "stderr": self.stderr[-2000:],
        }


def _limit_resources(timeout: float, memory_mb: int) -> None:
    """Runs in the child between fork and exec (preexec_fn), so it must not import: another
    thread of the parent may have held the import lock at fork time."""
    cpu = max(1, int(timeout) + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_BYTES * 10, OUTPUT_LIMIT_BYTES * 10))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_program(
    source: str,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    stdin_text: str = "",
    pass_marker: str | None = None,
) -> SandboxResult:
    """Run `source` as a Python program in a fresh sandboxed process.

    Passed means exit status 0 and, when `pass_marker` is given, that marker as the last line of
    stdout (so a program that exits 0 before its tests ran does not pass).
    """
    with tempfile.TemporaryDirectory(prefix="tunelab-sandbox-") as workdir:
        program = os.path.join(workdir, "program.py")
        with open(program, "w") as handle:
            handle.write(source)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        start = time.monotonic()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-B", program],
                cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,
                preexec_fn=lambda: _limit_resources(timeout, memory_mb),
            )
        except OSError as err:
            return SandboxResult("error", 0.0, None, "", f"could not start sandbox: {err}")
        try:
            stdout, stderr = process.communicate(stdin_text.encode(), timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(process)
            stdout, stderr = process.communicate()
            timed_out = True
        finally:
            _kill_group(process)  # reap anything the program left behind in its group
        runtime = time.monotonic() - start
    out = stdout[-OUTPUT_LIMIT_BYTES:].decode("utf-8", "replace")
    err = stderr[-OUTPUT_LIMIT_BYTES:].decode("utf-8", "replace")
    if timed_out or process.returncode == -signal.SIGXCPU:
        status = "timeout"
    elif process.returncode == 0:
        lines = out.rstrip("\n").splitlines()
        status = "passed" if pass_marker is None or (lines and lines[-1] == pass_marker) else "failed"
    else:
        status = "failed"
    return SandboxResult(status, runtime, process.returncode, out, err)


# The harness wraps the candidate so that what it returns must be built-in data, or instances of
# classes the problem itself defined (LeetCode's ListNode/TreeNode): an object whose __eq__ always
# answers True cannot satisfy `assert candidate(x) == y`. A problem prefix that compiles on its
# own (LeetCodeDataset) runs first; its names are snapshotted and must be untouched by the
# completion, so patching ListNode.__eq__ or a test helper fails the sample.
_HARNESS = '''
import sys as _tunelab_sys
_SCALARS = (int, float, complex, str, bytes, bool, type(None))

def _tunelab_check_value(value, trusted):
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
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
            raise TypeError("candidate returned a %r, which is neither built-in data nor a problem type" % kind.__name__)

def _tunelab_snapshot(namespace):
    names = {k: v for k, v in namespace.items() if not k.startswith("__")}
    classes = {k: dict(vars(v)) for k, v in names.items() if isinstance(v, type)}
    return names, classes

def _tunelab_code_shape(code):
    consts = tuple(_tunelab_code_shape(c) if hasattr(c, "co_code") else c for c in code.co_consts)
    return code.co_code, code.co_names, consts

def _tunelab_same_function(old, new):
    """A restated helper with the same bytecode (positions aside) is not tampering."""
    code_old, code_new = getattr(old, "__code__", None), getattr(new, "__code__", None)
    return (code_old is not None and code_new is not None
            and _tunelab_code_shape(code_old) == _tunelab_code_shape(code_new))

def _tunelab_untouched(namespace, snapshot, entry_name):
    names, classes = snapshot
    for key, value in names.items():
        current = namespace.get(key)
        if key == entry_name or current is value and key not in classes:
            continue
        restated_constant = type(current) is type(value) and type(value) in _SCALARS and current == value
        if current is not value and not restated_constant and not _tunelab_same_function(value, current):
            raise RuntimeError("the completion redefined the problem's %r" % key)
        if key in classes and dict(vars(value)) != classes[key]:
            raise RuntimeError("the completion modified the problem's class %r" % key)

def _tunelab_run(marker, prefix, completion, test, entry_point):
    namespace = {"__name__": "__candidate__"}
    try:
        completion_code = compile(completion, "solution.py", "exec")
        prefix_code = compile(prefix, "problem.py", "exec")
    except SyntaxError:
        completion_code = None  # HumanEval style: the completion finishes the prompt's function
    snapshot, trusted = ({}, {}), set()
    if completion_code is None:
        exec(compile(prefix + completion, "solution.py", "exec"), namespace)
    else:
        exec(prefix_code, namespace)
        snapshot = _tunelab_snapshot(namespace)
        trusted = {v for v in snapshot[0].values() if isinstance(v, type)}
        exec(completion_code, namespace)
    exec(compile(test, "test.py", "exec"), namespace)
    candidate = eval(entry_point, namespace)

    def guarded(*args, **kwargs):
        result = candidate(*args, **kwargs)
        _tunelab_check_value(result, trusted)
        return result

    namespace["check"](guarded)
    _tunelab_untouched(namespace, snapshot, entry_point.split('(')[0].split('.')[0])
    _tunelab_sys.stdout.flush()
    _tunelab_sys.stdout.write("\\n" + marker + "\\n")
    _tunelab_sys.stdout.flush()

_tunelab_run(_tunelab_sys.stdin.readline().strip(), @PREFIX@, @COMPLETION@, @TEST@, @ENTRY_POINT@)
'''


def build_check_program(problem: dict[str, Any], completion: str) -> str:
    """A program that runs `problem`'s tests against `completion` (HumanEval or LeetCodeDataset)."""
    return (
        _HARNESS.replace("@PREFIX@", repr(problem["prompt"]))
        .replace("@COMPLETION@", repr(completion))
        .replace("@TEST@", repr(problem["test"]))
        .replace("@ENTRY_POINT@", repr(problem["entry_point"]))
    )


def check_completion(problem: dict[str, Any], completion: str, timeout: float, memory_mb: int) -> dict:
    # The marker travels on stdin and is never in the program text, so the solution cannot print
    # it without reading the harness's own frame.
    marker = "TUNELAB-PASS-" + secrets.token_hex(16)
    result = run_program(build_check_program(problem, completion), timeout, memory_mb,
                         stdin_text=marker + "\n", pass_marker=marker)
    return {
        "task_id": problem["task_id"],
        "passed": result.status == "passed",
        "status": result.status,
        "runtime_s": round(result.runtime_s, 4),
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


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m tunelab.sandbox", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one program; print a JSON verdict")
    run.add_argument("program")
    check = commands.add_parser("check", help="check completions against problems")
    check.add_argument("--problems", required=True)
    check.add_argument("--samples", required=True)
    check.add_argument("--out")
    check.add_argument("--workers", type=int, default=2)
    for sub in (run, check):
        sub.add_argument("--timeout", type=float, default=10.0)
        sub.add_argument("--memory-mb", type=int, default=1024)
    args = parser.parse_args(argv)

    if args.command == "run":
        with open(args.program) as handle:
            result = run_program(handle.read(), args.timeout, args.memory_mb)
        print(json.dumps(result.as_dict()))
        return 0

    problems = load_problems(args.problems)
    with open(args.samples) as handle:
        samples = [json.loads(line) for line in handle if line.strip()]
    verdicts = check_samples(problems, samples, args.timeout, args.memory_mb, args.workers)
    if args.out:
        with open(args.out, "w") as handle:
            handle.writelines(json.dumps(v) + "\n" for v in verdicts)
    else:
        for verdict in verdicts:
            print(json.dumps(verdict))
    summary = {"pass@1": pass_at_1(verdicts), "samples": len(verdicts),
               "tasks": len({v["task_id"] for v in verdicts})}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
