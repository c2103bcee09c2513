"""`sandbox.require` fails closed, and every result says what its model code ran under."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tunelab.eval.evaluate import sandbox_summary
from tunelab.sandbox.harness import check_completion
from tunelab.sandbox.protections import SandboxUnavailable, promised, record, require
from tunelab.sandbox.runner import PROTECTIONS, WRAPPER_ENV, isolation, run_program

PROBLEM = {"task_id": "t/add", "prompt": "def add(a, b):\n", "entry_point": "add",
           "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}


def test_this_machine_gives_every_promised_protection():
    """Under `make test` (as in CI) a machine short of a promised protection fails here, loudly."""
    found = isolation()
    lacking = [name for name in promised(found) if name not in found.protections]
    if lacking and not os.environ.get("TUNELAB_REQUIRE_ALL_HOSTILE"):
        pytest.skip(f"this machine lacks {', '.join(lacking)}: {found.weaker_because or 'see isolation()'}")
    assert require(["promised"]) == found


def test_a_wrapper_that_isolates_nothing_fails_closed_with_one_line(monkeypatch):
    monkeypatch.setenv(WRAPPER_ENV, "env")  # runs python as it is: no namespace, no private filesystem
    with pytest.raises(SandboxUnavailable) as raised:
        require(["promised"])
    message = str(raised.value)
    assert "\n" not in message and "so no model code ran" in message
    assert "Missing network: " in message and "; filesystem: " in message and "Fix: " in message
    with pytest.raises(SandboxUnavailable, match=r"Missing network: .*unshare-net"):
        require(["network"])
    assert set(record(["promised"])["protections"]) <= {"process-limit"}


def test_a_protection_no_machine_has_is_refused_by_name():
    with pytest.raises(Exception, match=r"'netwrk' is not a protection \(allowed: network, filesystem, "
                                        r"process-limit, caller-unreachable, promised\)"):
        require(["netwrk"])


def test_the_command_line_stops_before_any_program_runs(tmp_path):
    canary = tmp_path / "ran"
    program = tmp_path / "program.py"
    program.write_text(f"open({str(canary)!r}, 'w').write('ran')\n")
    command = [sys.executable, "-m", "tunelab.sandbox", "run", str(program)]
    env = {**os.environ, "PYTHONPATH": str(REPO), WRAPPER_ENV: "env"}
    stopped = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 1 and not canary.exists(), stopped.stderr
    assert stopped.stderr.count("\n") == 1 and stopped.stderr.startswith("error: the sandbox cannot give")
    # Lowered knowingly, the same machine runs it, and the verdict says how little it had.
    lowered = subprocess.run(command + ["--require", ""], env=env, capture_output=True, text=True, timeout=60)
    assert lowered.returncode == 0 and canary.exists(), lowered.stderr
    assert '"protections": [' in lowered.stdout and '"network"' not in lowered.stdout


def test_every_verdict_row_records_what_its_candidate_ran_under():
    found = isolation()
    assert found.protections and set(found.protections) <= set(PROTECTIONS)
    row = check_completion(PROBLEM, "    return a + b\n", timeout=5, memory_mb=512)
    assert row["passed"] and row["protections"] == ",".join(found.protections)
    assert run_program("pass").as_dict()["protections"] == found.protections


def test_the_report_says_when_model_code_ran_under_less_than_required():
    from tunelab.track.report import sandbox_line

    full = {"protections": ["network", "filesystem"], "required": ["network"], "missing": [], "variants": {"b": {}}}
    assert sandbox_line(full) == "Sandbox: every program of model code ran under network, filesystem."
    weaker = {**full, "protections": ["filesystem"], "missing": ["network"]}
    assert "**Weaker than required: network missing**" in sandbox_line(weaker)


def test_the_evaluation_summary_keeps_the_weakest_variant():
    full = {"protections": ["network", "filesystem", "process-limit"], "required": ["network", "filesystem"]}
    weaker = {"protections": ["filesystem", "process-limit"], "required": ["filesystem"]}
    summary = sandbox_summary({"base": {"sandbox": full}, "sft": {"sandbox": weaker}})
    assert summary["protections"] == ["filesystem", "process-limit"]
    assert summary["required"] == ["filesystem", "network"] and summary["missing"] == ["network"]
