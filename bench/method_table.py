"""The README's table of training methods: one row per DVC experiment on the current commit.

    python bench/method_table.py [REV]      # reads `dvc exp show --json [--rev REV]`

REV is the commit the experiments were run on (default: HEAD).

Columns are the SFT method, the alignment method, their training times and the aligned model's
scores (in %, with 95% bootstrap intervals); the workspace row is the committed default run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def cell(metric: dict[str, float]) -> str:
    return f"{100 * metric['mean']:.1f} [{100 * metric['ci_low']:.1f}, {100 * metric['ci_high']:.1f}]"


def row(name: str, data: dict[str, Any]) -> str:
    params = data["params"]["params.yaml"]["data"]
    metrics = {path: entry["data"] for path, entry in data["metrics"].items()}
    sft, align = metrics["reports/sft.json"], metrics["reports/align.json"]
    variants = metrics["reports/evaluate.json"]["variants"]
    sft_scores, aligned = variants["sft"], variants["aligned"]
    return (
        f"| {name} | {params['sft']['peft']} | {sft['runtime_s']:.0f} s | {sft['eval_loss']:.3f} | "
        f"{params['method']} | {align['runtime_s']:.0f} s | "
        f"{cell(sft_scores['ifeval']['prompt_level_loose'])} | {cell(aligned['ifeval']['prompt_level_loose'])} | "
        f"{cell(sft_scores['humaneval']['pass@1'])} | {cell(aligned['humaneval']['pass@1'])} |"
    )


def finished(revision: dict[str, Any]) -> bool:
    """Queued and running experiments are listed too, without metric values."""
    data = revision.get("data") or {}
    metrics = data.get("metrics") or {}
    return not revision.get("error") and bool(metrics) and all("data" in entry for entry in metrics.values())


def main() -> None:
    revision = ["--rev", sys.argv[1]] if len(sys.argv) > 1 else []
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json", *revision], capture_output=True, text=True,
                                      check=True).stdout)
    print("| run | sft.peft | sft time | sft eval loss | method | align time | sft IFEval | aligned IFEval "
          "| sft HumanEval | aligned HumanEval |")
    print("|" + " --- |" * 10)
    baseline = next(entry for entry in shown if entry["rev"] != "workspace")
    print(row(f"{baseline['rev'][:7]} (committed)", baseline["data"]))
    for experiment in baseline.get("experiments") or []:
        for revision in experiment["revs"]:
            if finished(revision):
                print(row(revision["name"], revision["data"]))


if __name__ == "__main__":
    main()
