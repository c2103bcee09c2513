"""Counting the hostile corpus: `make test` sets TUNELAB_REQUIRE_ALL_HOSTILE=1, and then a run in
which any hostile case did not run (skipped for a protection this machine lacks) fails."""

from __future__ import annotations

import os

import pytest

HOSTILE_TESTS = ("test_hostile_program_is_contained[", "test_hostile_program_is_contained_under_bubblewrap[")
_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    name = report.nodeid.split("::")[-1]
    if name.startswith(HOSTILE_TESTS) and (report.when == "call" or report.skipped):
        _outcomes[report.nodeid] = "skipped" if report.skipped else report.outcome


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _outcomes:
        return
    ran = sum(outcome != "skipped" for outcome in _outcomes.values())
    terminalreporter.write_line(f"hostile cases: {ran} of {len(_outcomes)} ran "
                                f"({sum(o == 'passed' for o in _outcomes.values())} passed)")
    if os.environ.get("TUNELAB_REQUIRE_ALL_HOSTILE") == "1" and ran < len(_outcomes):
        skipped = sorted(node.split("::")[-1] for node, outcome in _outcomes.items() if outcome == "skipped")
        terminalreporter.write_line("error: TUNELAB_REQUIRE_ALL_HOSTILE=1 but these did not run: " + ", ".join(skipped))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    skipped = [node for node, outcome in _outcomes.items() if outcome == "skipped"]
    if os.environ.get("TUNELAB_REQUIRE_ALL_HOSTILE") == "1" and skipped and exitstatus == 0:
        session.exitstatus = 1
