"""Checking a completion against a problem's tests, with the verdict decided where the completion
cannot reach it.

Three processes take part in every check:
- the candidate's program, started confined by `tunelab.sandbox.runner.run_dialogue`: the
  problem's prefix (LeetCode's imports and classes, or HumanEval's prompt) and the completion,
  then a loop that answers calls. It receives a call's arguments as plain data
  (`tunelab.sandbox.plaindata`), calls the solution, and answers with what it returned (or the
  exception it raised) and the arguments as the call left them;
- the checker, a plain interpreter that never runs model code: it runs the problem's prefix and
  tests, and calls `check(candidate)` with a proxy that forwards every call to the candidate;
  the verdict is whether `check` returned;
- the caller (this module), which starts both and passes lines between them.
No marker, expected value or test code enters the candidate's process, so nothing it can read,
print or patch there bears on the verdict; what it returns is rebuilt in the checker from plain
data, with the checker's own classes, so an object that merely claims equality cannot exist
there. A passed check also needs the candidate's program to exit 0 once its calls are answered.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tunelab.sandbox.runner import Conversation, run_dialogue

PLAINDATA_SOURCE = (Path(__file__).parent / "plaindata.py").read_text()

# The candidate's side: the only program that runs model code.
_ANSWERER = r'''
def _tunelab_answer(prefix, completion, entry_point, plaindata):
    import copy, marshal, os, sys

    def fresh(value):
        """A copy to call the solution on again: marshal's is many times cheaper than deepcopy's,
        which only the problem's own classes (ListNode) need."""
        try:
            return marshal.loads(marshal.dumps(value))
        except ValueError:
            return copy.deepcopy(value)
    codec = {"__name__": "plaindata"}
    exec(compile(plaindata, "plaindata.py", "exec"), codec)
    encode, decode = codec["encode"], codec["decode"]
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # what the solution prints goes to stderr: stdout carries its answers only
    namespace = {"__name__": "__candidate__"}
    try:
        solution = compile(completion, "solution.py", "exec")
    except SyntaxError:
        solution = None  # HumanEval style: the completion finishes the prompt's function
    if solution is None:
        exec(compile(prefix + completion, "solution.py", "exec"), namespace)
    else:
        exec(compile(prefix, "problem.py", "exec"), namespace)
        exec(solution, namespace)
    candidate = eval(entry_point, namespace)
    classes = {name: value for name, value in namespace.items() if isinstance(value, type)}
    for line in sys.stdin:
        try:
            args, kwargs, repeat, copies_only = decode(line, classes)
            for _ in range(repeat - 1):  # timing runs: the same call on fresh copies
                fresh_args, fresh_kwargs = fresh(args), fresh(kwargs)
                if not copies_only:
                    candidate(*fresh_args, **fresh_kwargs)
            reply = encode(["returned", candidate(*args, **kwargs), [args, kwargs]], classes)
        except BaseException as err:
            try:
                reply = encode(["raised", type(err).__name__, str(err)[:1000]], {})
            except BaseException:
                reply = encode(["raised", "Exception", ""], {})
        answers.write(reply + "\n")
        answers.flush()

_tunelab_answer(@PREFIX@, @COMPLETION@, @ENTRY_POINT@, @PLAINDATA@)
'''

# The checker's side: the problem's own code and tests, and a proxy for the candidate. One checker
# serves a thread's checks one after another, each in a child forked from it, so every check starts
# from the same fresh interpreter without paying for one. Its stdout carries messages to the
# caller; the tests' own prints go to stderr.
_CHECKER = r'''
import builtins, json, os, random, sys

def _tunelab_serve(plaindata):
    codec = {"__name__": "plaindata"}
    exec(compile(plaindata, "plaindata.py", "exec"), codec)
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)

    def send(message):
        out.write(json.dumps(message) + "\n")
        out.flush()

    while True:
        line = b""
        while not line.endswith(b"\n"):  # unbuffered: nothing past the task may be read here
            chunk = os.read(0, 65536)
            if not chunk:
                return
            line += chunk
        task = json.loads(line)
        child = os.fork()
        if child == 0:
            try:
                _tunelab_check(task, codec["encode"], codec["decode"], lambda message: send(dict(message, id=task["id"])))
            except BaseException as err:
                send({"error": "the checker failed: %s: %s" % (type(err).__name__, err), "id": task["id"]})
            finally:
                os._exit(0)
        _, status = os.waitpid(child, 0)
        if status:
            send({"error": "the checker ended with status %d" % status, "id": task["id"]})

def _tunelab_check(task, encode, decode, send):

    class NoAnswer(BaseException):
        """The candidate could not answer (not an Exception: a test's `except Exception` must not catch it)."""

    class CandidateError(Exception):
        """An exception the candidate raised that is not a built-in one."""

    namespace = {"__name__": "__problem__"}
    try:
        exec(compile(task["prefix"], "problem.py", "exec"), namespace)
    except SyntaxError:
        pass  # a HumanEval prompt that only compiles with its completion: the tests need nothing of it
    try:
        exec(compile(task["test"], "test.py", "exec"), namespace)
        check = namespace["check"]
    except BaseException as err:
        send({"error": "the problem's tests do not run: %s: %s" % (type(err).__name__, err)})
        return
    classes = {name: value for name, value in namespace.items()
               if isinstance(value, type) and value.__module__ == "__problem__"}

    def write_back(old, new):
        if type(old) is not type(new):
            return
        if type(old) in (list, bytearray):
            old[:] = new
        elif type(old) in (dict, set):
            old.clear()
            old.update(new)
        elif type(old) in classes.values():
            vars(old).clear()
            vars(old).update(vars(new))

    def candidate(*args, **kwargs):
        send({"call": encode([list(args), kwargs, task["repeat"], task["copies_only"]], classes)})
        answer = json.loads(sys.stdin.readline())["answer"]
        if answer is None:
            raise NoAnswer()
        try:
            kind, *rest = decode(answer, classes)
        except ValueError as err:
            raise TypeError("the candidate's answer is not plain data (%s)" % err) from None
        if kind == "raised" and len(rest) == 2 and all(type(x) is str for x in rest):
            raised = getattr(builtins, rest[0], None)
            if not (isinstance(raised, type) and issubclass(raised, Exception)):
                raised = CandidateError
            raise raised(rest[1])
        if kind != "returned" or len(rest) != 2 or type(rest[1]) is not list or len(rest[1]) != 2:
            raise TypeError("the candidate's answer is not a result")
        new_args, new_kwargs = rest[1]
        if type(new_args) is list and len(new_args) == len(args):
            for old, new in zip(args, new_args):
                write_back(old, new)
        if type(new_kwargs) is dict:
            for key, old in kwargs.items():
                if key in new_kwargs:
                    write_back(old, new_kwargs[key])
        return rest[0]

    if task["entry_point"].isidentifier():  # a test may call the solution by its name (HumanEval/33 does)
        namespace[task["entry_point"]] = candidate
    random.seed(0)  # tests that draw random inputs draw the same ones for every completion
    try:
        check(candidate)
    except NoAnswer:
        send({"no_answer": True})
    except BaseException as err:
        send({"failed": ("%s: %s" % (type(err).__name__, err))[:500]})
    else:
        send({"passed": True})

_tunelab_serve(@PLAINDATA@)
'''


def build_answer_program(problem: dict[str, Any], completion: str) -> str:
    """The candidate's program for `problem` (HumanEval or LeetCodeDataset format): its prefix, the
    completion and the loop that answers calls. It holds nothing of the problem's tests."""
    values = {"PREFIX": repr(problem["prompt"]), "COMPLETION": repr(completion),
              "ENTRY_POINT": repr(problem["entry_point"]), "PLAINDATA": repr(PLAINDATA_SOURCE)}
    # One pass, so a completion that contains '@PLAINDATA@' is not spliced into.
    return re.sub(r"@(PREFIX|COMPLETION|ENTRY_POINT|PLAINDATA)@", lambda m: values[m.group(1)], _ANSWERER)


class _Checker:
    """A checker process; `relay` is the dialogue that passes one check's calls to the candidate."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", _CHECKER.replace("@PLAINDATA@", repr(PLAINDATA_SOURCE))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"},
        )
        self.stderr: list[str] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        self.checks = 0

    def start(self, problem: dict[str, Any], repeat: int, copies_only: bool) -> None:
        self.checks += 1  # every message of this check carries it: a stale one from before is skipped
        self._send({"prefix": problem["prompt"], "test": problem["test"], "entry_point": problem["entry_point"],
                    "repeat": repeat, "copies_only": copies_only, "id": self.checks})

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr = (self.stderr + [line])[-20:]

    def _send(self, message: dict[str, Any]) -> None:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def relay(self, talk: Conversation) -> dict[str, Any]:
        """Pass the checker's calls to the candidate and its answers back; the checker's last message."""
        for line in self.process.stdout:
            message = json.loads(line)
            if message.get("id") != self.checks:
                continue
            if "call" not in message:
                return message
            answer = talk.ask(message["call"].encode())
            self._send({"answer": answer.decode("utf-8", "replace") if answer is not None else None})
        return {"error": "the checker ended: " + "".join(self.stderr[-1:]).strip()}

    def close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.process.kill()
        self.process.wait()
        self._drain.join(timeout=5)


_checkers = threading.local()  # one checker per thread that checks: checks in a thread run one at a time
_checker_pids: set[int] = set()


def _checker() -> _Checker:
    checker = getattr(_checkers, "checker", None)
    if checker is None or checker.process.poll() is not None:
        checker = _checkers.checker = _Checker()
        _checker_pids.add(checker.process.pid)
    return checker


def _drop_checker() -> None:
    checker = getattr(_checkers, "checker", None)
    if checker is not None:
        checker.close()
        _checker_pids.discard(checker.process.pid)
        _checkers.checker = None


def checker_pids() -> set[int]:
    """The checker processes this process keeps (trusted: they never run model code)."""
    return set(_checker_pids)


def check_completion(problem: dict[str, Any], completion: str, timeout: float, memory_mb: int,
                     check_calls: int = 1, copies_only: bool = False) -> dict:
    """One verdict row: task_id, passed, status, runtime_s (wall), cpu_s (kernel), network_isolated,
    protections (what the candidate ran under, comma-separated `runner.PROTECTIONS`), error.

    `check_calls` > 1 makes the candidate repeat every call that many times (on fresh copies of
    the arguments), only to time the solution: its CPU time is the kernel's (`wait4`). With
    `copies_only` it makes the copies but calls the solution once: what such a run costs besides
    the solution's own work (`tunelab.tasks.codequality` subtracts it).
    """
    if check_calls < 1:
        raise ValueError(f"check_calls must be at least 1, not {check_calls}")
    checker = _checker()
    in_step = False
    try:
        checker.start(problem, check_calls, copies_only)
        result, said, raised = run_dialogue(build_answer_program(problem, completion), checker.relay, timeout,
                                            memory_mb)
        in_step = raised is None and said is not None
    finally:
        if not in_step:  # where the checker stopped in its dialogue is unknown: start the next one afresh
            _drop_checker()
    if raised is not None:
        said = {"error": f"the checker's dialogue failed: {type(raised).__name__}: {raised}"}
    program_error = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    if said.get("passed") and result.status == "passed":
        status, error = "passed", ""
    elif "error" in said and result.status != "timeout":
        status, error = "error", said["error"]
    elif result.status in ("timeout", "error"):
        status, error = result.status, program_error
    else:
        status, error = "failed", said.get("failed") or program_error or "the candidate did not answer"
    return {
        "task_id": problem["task_id"],
        "passed": status == "passed",
        "status": status,
        "runtime_s": round(result.runtime_s, 4),
        "cpu_s": round(result.cpu_s, 4),
        "network_isolated": result.network_isolated,
        "protections": ",".join(result.protections),
        "error": error,
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
