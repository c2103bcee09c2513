"""The table of training methods in docs/results.md: one row per DVC experiment on the current commit.

    python bench/method_table.py [REV]      # experiments from `dvc exp show --json [--rev REV]`, reports from git

REV is the commit the experiments were run on (default: HEAD).

Columns are the SFT method, the alignment method, their training times and the aligned model's
scores (in %, with 95% bootstrap intervals); the workspace row is the committed default run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repo root

from tunelab.track.compare import committed_report, finished_reports, show_experiments  # noqa: E402
from tunelab.track.report import interval_cell  # noqa: E402


def row(name: str, rev: dict[str, Any], reports: dict[str, Any]) -> str:
    params = rev["data"]["params"]["params.yaml"]["data"]
    sft, align = reports["sft"], committed_report(rev["rev"], "align")
    variants = reports["evaluate"]["variants"]
    sft_scores, aligned = variants["sft"], variants["aligned"]
    return (
        f"| {name} | {params['sft']['peft']} | {sft['runtime_s']:.0f} s | {sft['eval_loss']:.3f} | "
        f"{params['method']} | {align['runtime_s']:.0f} s | "
        f"{interval_cell(sft_scores['ifeval']['prompt_level_loose'])} | {interval_cell(aligned['ifeval']['prompt_level_loose'])} | "
        f"{interval_cell(sft_scores['humaneval']['pass@1'])} | {interval_cell(aligned['humaneval']['pass@1'])} |"
    )


def main() -> None:
    revision = ["--rev", sys.argv[1]] if len(sys.argv) > 1 else []
    shown = show_experiments(*revision)
    print("| run | sft.peft | sft time | sft eval loss | method | align time | sft IFEval | aligned IFEval "
          "| sft HumanEval | aligned HumanEval |")
    print("|" + " --- |" * 10)
    baseline = next(entry for entry in shown if entry["rev"] != "workspace")
    print(row(f"{baseline['rev'][:7]} (committed)", baseline, finished_reports(baseline)))
    for experiment in baseline.get("experiments") or []:
        for revision in experiment["revs"]:
            if reports := finished_reports(revision, experiment.get("executor")):
                print(row(revision["name"], revision, reports))


if __name__ == "__main__":
    main()
