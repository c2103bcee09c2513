"""The sandbox runs model-written code out of process and does not count cheats as passes."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SHARED_DATA
from tunelab.sandbox.harness import (
    build_answer_program,
    check_completion,
    check_samples,
    load_problems,
    pass_at_1,
)
from tunelab.sandbox.runner import (
    OUTPUT_LIMIT_BYTES,
    PROCESS_ALLOWANCE,
    WRAPPER_ENV,
    isolation,
    network_isolated,
    run_program,
)
from tunelab.tasks.humaneval import load_humaneval

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


def needs_process_limit():
    if isolation().process_limit == "none":
        pytest.skip("no process-count limit here (root without a writable pids cgroup): a fork bomb would hit the host")


def live_pids_in(directory: str) -> list[int]:
    """Running processes whose working directory is `directory` (the run's, deleted by now)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{entry}/cwd").startswith(directory):
                found.append(int(entry))
        except OSError:
            continue  # gone, a zombie, or not ours to see
    return found


def test_process_count_is_capped():
    needs_process_limit()
    forks = ("import os, time\nmade = 0\nfor _ in range(3 * %d):\n    try:\n        pid = os.fork()\n"
             "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(1)\n        os._exit(0)\n"
             "    made += 1\nprint(made)\n" % PROCESS_ALLOWANCE)
    result = run_program(forks, timeout=10)
    assert result.status == "passed" and result.process_limit == isolation().process_limit
    assert 0 < int(result.stdout) < PROCESS_ALLOWANCE  # the program itself is one of the allowance


def test_fork_bomb_is_stopped_and_nothing_outlives_it():
    needs_process_limit()
    bomb = "import os, sys\nsys.stdout.write(os.getcwd() + '\\n')\nsys.stdout.flush()\nfor _ in range(500):\n    os.fork()\n"
    started = time.monotonic()
    result = run_program(bomb, timeout=10)
    assert result.status == "failed" and "BlockingIOError" in result.stderr
    assert time.monotonic() - started < 5
    workdir = result.stdout.splitlines()[0]
    assert workdir.startswith(os.path.join(os.path.realpath("/tmp"), "tunelab-sandbox-")) or "tunelab-sandbox-" in workdir
    assert live_pids_in(workdir) == []
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes
    assert not verdict("    import os\n    for _ in range(500):\n        os.fork()\n    return a + b\n")["passed"]


def test_a_process_that_leaves_the_group_is_still_killed():
    if isolation().process_limit != "pids-cgroup":
        pytest.skip("only a pids cgroup finds processes that left the process group with setsid")
    escape = ("import os, sys, time\npid = os.fork()\nif pid == 0:\n    os.setsid()\n"
              "    devnull = os.open(os.devnull, os.O_RDWR)\n    for fd in (0, 1, 2):\n        os.dup2(devnull, fd)\n"
              "    time.sleep(60)\n    os._exit(0)\nprint(pid)\n")
    result = run_program(escape, timeout=10)
    assert result.status == "passed"
    escapee = int(result.stdout)
    try:
        with open(f"/proc/{escapee}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z", "X")


def test_no_network_when_the_machine_allows_it():
    if not network_isolated():
        pytest.skip("this machine does not allow a new network namespace (unprivileged user namespaces off)")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # reachable from here, so a failure in the sandbox is the sandbox's doing
        client = ("import socket, sys\ntry:\n    socket.create_connection(('127.0.0.1', %d), timeout=5)\n"
                  "except OSError as err:\n    print(err)\n    sys.exit(3)\n" % port)
        result = run_program(client, timeout=10)
    assert result.returncode == 3 and result.network_isolated
    assert result.as_dict()["network_isolated"] is True


def test_cpu_time_comes_from_the_kernel_not_the_wall_clock():
    busy = run_program("x = 0\nfor i in range(3 * 10 ** 6):\n    x += i\nprint('cpu_s: 0.0')\n", timeout=10)
    idle = run_program("import time\ntime.sleep(0.5)\n", timeout=10)
    assert busy.status == idle.status == "passed"
    assert busy.cpu_s > 0.1 and busy.as_dict()["cpu_s"] == round(busy.cpu_s, 4)
    assert idle.runtime_s >= 0.5 and idle.cpu_s < 0.25


def test_output_flood_is_stopped():
    started = time.monotonic()
    result = run_program("while True:\n    print('x' * 100000)\n", timeout=10)
    assert result.status == "failed" and "output limit exceeded" in result.stderr
    assert len(result.stdout) <= OUTPUT_LIMIT_BYTES and time.monotonic() - started < 5


def test_placeholders_in_a_completion_are_not_substituted():
    completion = "    return a + b if '@PLAINDATA@@ENTRY_POINT@' else 0\n"
    assert repr(completion) in build_answer_program(PROBLEM, completion)
    assert verdict(completion)["passed"]
    with pytest.raises(ValueError, match="check_calls"):
        check_completion(PROBLEM, completion, 5, 512, check_calls=0)
    assert check_completion(PROBLEM, completion, 5, 512, check_calls=20)["passed"]


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
    stubs = [{"task_id": p["task_id"], "completion": "    return None\n"} for p in problems]
    verdicts = check_samples(by_id, continued)
    assert pass_at_1(verdicts) == 1.0
    assert all(v["cpu_s"] > 0 and v["network_isolated"] == network_isolated() for v in verdicts)
    assert pass_at_1(check_samples(by_id, restated)) == 1.0
    wrong = check_samples(by_id, stubs)
    assert [v["status"] for v in wrong] == ["failed"] * 164


@pytest.mark.parametrize("tamper", [
    "\nListNode.__eq__ = lambda self, other: True\n",
    "\ndef is_same_list(a, b):\n    return True\n",
    "\nimport builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n",
])
def test_tampering_with_the_problem_cannot_pass_a_wrong_solution(tamper):
    """The tests and their helpers run in the checker: what the completion patches in its own
    process changes its own answers only."""
    problems = load_problems(str(SHARED_DATA / "leetcode_problems_sample.jsonl"))
    linked = next(p for p in problems.values() if "ListNode" in p["completion"])
    method = linked["entry_point"].split(".")[-1]
    wrong = f"{linked['completion']}\nSolution.{method} = lambda self, *args, **kwargs: None\n"
    assert check_completion(linked, linked["completion"] + tamper, 5, 512)["passed"]
    assert not check_completion(linked, wrong, 5, 512)["passed"]
    assert not check_completion(linked, wrong + tamper, 5, 512)["passed"]


def test_a_helper_named_like_a_wildcard_import_is_honest():
    """LeetCode prefixes do `from functools import *`; a solution's own `partial` is its business."""
    problems = load_problems(str(SHARED_DATA / "leetcode_problems_sample.jsonl"))
    problem = next(p for p in problems.values() if "from functools import *" in p["prompt"])
    helper = "\n\ndef partial(*args, **kwargs):\n    return None\n"
    assert check_completion(problem, helper + problem["completion"], 5, 512)["passed"]


def test_results_and_in_place_changes_come_back_as_plain_data():
    """A result is rebuilt in the checker, and arguments come back as the call left them."""
    problem = {"task_id": "t/sort", "prompt": "",
               "entry_point": "Solution().sort_in_place",
               "test": ("def check(candidate):\n"
                        "    nums, seen = [3, 1, 2], {'a': 1}\n"
                        "    assert candidate(nums, seen=seen) is None\n"
                        "    assert nums == [1, 2, 3] and seen == {'a': 1, 'sorted': True}\n")}
    solution = ("class Solution:\n    def sort_in_place(self, nums, seen):\n"
                "        nums.sort()\n        seen['sorted'] = True\n")
    assert check_completion(problem, solution, 5, 512)["passed"]
    assert not check_completion(problem, solution.replace("nums.sort()", "nums = sorted(nums)"), 5, 512)["passed"]


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
    assert result["cpu_s"] <= result["runtime_s"] + 0.1 and result["network_isolated"] == network_isolated()


def confine_run(tmp_path, plan_changes: dict, program: str):
    """Run `program` through tunelab.sandbox.confine with a do-nothing plan changed by `plan_changes`:
    (exit status, what came back on the error pipe, the program's stdout)."""
    from tunelab.sandbox.runner import confine

    plan = dict(timeout=5.0, memory_mb=512, scratch_bytes=1 << 20, file_size_bytes=1 << 20, unshare_flags=0,
                id_maps=None, cgroup_procs=(), nproc=None, workdir=None, program="", uid=None, reveal=())
    plan.update(plan_changes)
    plan_path = str(tmp_path / "plan.marshal")
    confine.save_plan(plan, plan_path)
    error_read, error_write = os.pipe()
    try:
        process = subprocess.Popen(confine.command(plan_path, error_write, [sys.executable, "-c", program]),
                                   cwd=tmp_path, stdout=subprocess.PIPE, pass_fds=(error_write,))
    finally:
        os.close(error_write)
    with os.fdopen(error_read, "rb") as errors:
        reason = errors.read().decode()
    stdout, _ = process.communicate(timeout=30)
    assert not os.path.exists(plan_path), "the plan must be gone before the program runs"
    return process.returncode, reason, stdout.decode()


def test_confinement_applies_its_limits_then_runs_the_program(tmp_path):
    status, reason, stdout = confine_run(
        tmp_path, {}, "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[1],"
                      " resource.getrlimit(resource.RLIMIT_FSIZE)[1])")
    assert (status, reason, stdout.split()) == (0, "", ["64", str(1 << 20)])


def test_a_failed_confinement_step_never_runs_the_program(tmp_path):
    from tunelab.sandbox.confine import CONFINE_FAILED

    status, reason, stdout = confine_run(
        tmp_path, {"cgroup_procs": ("/nonexistent-cgroup/cgroup.procs",)}, "open('ran', 'w'); print('ran')")
    assert status == CONFINE_FAILED and stdout == ""
    assert "FileNotFoundError" in reason and "/nonexistent-cgroup/cgroup.procs" in reason
    assert not (tmp_path / "ran").exists()


def test_run_program_reports_a_failed_confinement_as_an_error(monkeypatch):
    """A private filesystem whose tmpfs cannot be mounted (an invalid size): one 'error' naming the
    cause, and the program does not run unconfined."""
    import tunelab.sandbox.runner as sandbox

    if not isolation().filesystem:
        pytest.skip("no private filesystem on this machine")
    monkeypatch.setattr(sandbox, "SCRATCH_LIMIT_BYTES", -1)
    result = run_program("print('ran')", timeout=5)
    assert result.status == "error" and result.returncode is None and "ran" not in result.stdout
    assert result.stderr.startswith("could not start sandbox: OSError")


@pytest.mark.parametrize("wrapper", ["", "bubblewrap"])
def test_an_interpreter_under_tmp_keeps_every_protection(wrapper):
    """A checkout (and its .venv) under /tmp: the private filesystem covers /tmp with its own tmpfs
    and binds the interpreter's directories back, read-only, and so does the bubblewrap preset;
    every promised protection still applies, and a program cannot write into the checkout."""
    if wrapper and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    if not wrapper and not isolation().filesystem:
        pytest.skip("no private filesystem on this machine at all")
    checkout = Path(tempfile.mkdtemp(prefix="tunelab-checkout-", dir="/tmp"))
    try:
        subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(checkout / ".venv")], check=True)
        shutil.copytree(REPO / "tunelab", checkout / "tunelab", ignore=shutil.ignore_patterns("__pycache__"))
        # The protections module needs PyYAML (tunelab.core.config); the bare venv sees it through a .pth.
        site = next((checkout / ".venv/lib").glob("python3*/site-packages"))
        (site / "host.pth").write_text(str(Path(yaml.__file__).parent.parent) + "\n")
        probe = ("import json, os\n"
                 "from tunelab.sandbox.protections import require\n"
                 "from tunelab.sandbox.runner import run_program\n"
                 "found = require(['promised'])\n"
                 "program = ('import os\\n'\n"
                 "           'open(\"/tmp/scratch\", \"w\").write(\"ok\")\\n'\n"
                 "           'try:\\n'\n"
                 "           '    open(%r, \"w\")\\n'\n"
                 "           '    print(\"WROTE-INTO-THE-CHECKOUT\")\\n'\n"
                 "           'except OSError as err:\\n'\n"
                 "           '    print(type(err).__name__)\\n') % os.path.join(os.getcwd(), '.venv', 'planted')\n"
                 "result = run_program(program)\n"
                 "print(json.dumps([found.protections, bool(found.wrapper), result.status, result.stdout]))\n")
        shown = subprocess.run([str(checkout / ".venv/bin/python"), "-c", probe], cwd=checkout, capture_output=True,
                               text=True, env={**os.environ, WRAPPER_ENV: wrapper})
        assert shown.returncode == 0, shown.stderr[-2000:]
        protections, wrapped, status, stdout = json.loads(shown.stdout.splitlines()[-1])
        assert {"network", "filesystem", "process-limit"} <= set(protections) and wrapped == bool(wrapper), shown
        assert status == "passed" and "WROTE-INTO-THE-CHECKOUT" not in stdout, shown
        assert not (checkout / ".venv/planted").exists()
    finally:
        shutil.rmtree(checkout)
