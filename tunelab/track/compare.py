"""Compare every DVC experiment in one table and one figure: `make compare` -> reports/compare/.

    python -m tunelab.track.compare --out reports/compare [--all-commits | --rev COMMIT]

Lists the experiments from DVC's own records (`dvc exp show --json`: names, params, data hashes)
and reads each one's full reports from its git commit (DVC's metrics are only the headline file,
reports/headline.json), so it needs no MLflow server. One row per finished experiment plus the
committed default run; scores are the aligned model's, in %, with their 95% bootstrap intervals, and the
paired tests of the aligned model against base and SFT (difference in points, p-value). The
`data` column is the DVC hash of data/curated: rows with the same hash trained on the same data.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from pathlib import Path
from typing import Any, Callable

from tunelab.track.figures import bars_with_intervals
from tunelab.track.headline import variant_score
from tunelab.track.report import interval_cell

# (label, evaluate.json path under variants.aligned); the figure draws the first two.
SCORES = (("IFEval prompt loose", ("ifeval", "prompt_level_loose")), ("HumanEval pass@1", ("humaneval", "pass@1")),
          ("judge win rate vs base", ("judge", "win_rate")), ("explanation sacreBLEU", ("explanation", "bleu")),
          ("explanation BERTScore F1", ("explanation", "bertscore_f1")),
          ("held-out code pairs, efficient preferred", ("code_pairs", "acc")))
# The issue's verdicts: does the aligned model beat base and SFT on held-out instruction following,
# and is its code score no worse than base's? (label, evaluate.json comparison, metric)
VERDICTS = (("IFEval loose, aligned - base", "aligned_vs_base", "ifeval.prompt_level_loose"),
            ("IFEval loose, aligned - sft", "aligned_vs_sft", "ifeval.prompt_level_loose"),
            ("HumanEval, aligned - base", "aligned_vs_base", "humaneval.pass@1"))


def show_experiments(*options: str) -> list[dict[str, Any]]:
    """`dvc exp show --json` with extra options (e.g. --all-commits, --rev REV), parsed."""
    command = ["dvc", "exp", "show", "--json", *options]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout)


def committed_report(rev: str, name: str) -> dict[str, Any] | None:
    """reports/<name>.json as commit `rev` (an experiment's or a branch's) holds it; None where it has none.
    The reports are git-tracked outputs (`cache: false`), so every finished experiment's commit has them."""
    result = subprocess.run(["git", "show", f"{rev}:reports/{name}.json"], capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 else None


ReportReader = Callable[[str, str], "dict[str, Any] | None"]  # (commit, report name) -> the report


def finished_reports(rev: dict[str, Any], executor: dict[str, Any] | None = None,
                     report_at: ReportReader = committed_report) -> dict[str, Any] | None:
    """The evaluate and sft reports of a finished run; None for a queued, running or failed experiment
    (DVC lists those too, with an executor, an error or no commit of their own)."""
    if executor or rev.get("error") or rev["rev"] == "workspace" or (rev.get("data") or {}).get("rev") == "workspace":
        return None
    evaluation = report_at(rev["rev"], "evaluate")
    return None if evaluation is None else {"evaluate": evaluation, "sft": report_at(rev["rev"], "sft") or {}}


def experiment_row(name: str, rev: dict[str, Any], baseline: str, reports: dict[str, Any]) -> dict[str, Any]:
    data = rev["data"]
    params = data["params"]["params.yaml"]["data"]
    evaluation = reports["evaluate"]
    curated = (data.get("deps") or {}).get("data/curated") or {}
    return {
        "experiment": name, "commit": baseline[:7], "method": params.get("method"),
        "sft_peft": params.get("sft", {}).get("peft"), "data": (curated.get("hash") or "")[:8],
        "sft_eval_loss": reports["sft"].get("eval_loss"),
        "scores": {label: variant_score(evaluation["variants"], "aligned", path) for label, path in SCORES},
        "verdicts": {label: evaluation.get("comparisons", {}).get(pair, {}).get(metric)
                     for label, pair, metric in VERDICTS},
    }


def verdict_cell(test: dict[str, Any] | None) -> str:
    """A paired difference in points with its p-value, bold where significant; '-' where not computed."""
    if not test:
        return "-"
    cell = f"{100 * test['diff']:+.1f} (p={test['p_value']:.2f})"
    return f"**{cell}**" if test.get("significant") else cell


def collect(shown: list[dict[str, Any]], report_at: ReportReader = committed_report) -> list[dict[str, Any]]:
    """The committed default run of the first commit shown (HEAD, or --rev) first, then every finished
    experiment, oldest commit last."""
    rows = []
    commits = [entry for entry in shown if entry["rev"] != "workspace"]
    for position, entry in enumerate(commits):
        baseline = entry["rev"]
        if position == 0 and (reports := finished_reports(entry, report_at=report_at)):
            rows.append(experiment_row("default", entry, baseline, reports))
        for experiment in entry.get("experiments") or []:
            for rev in experiment["revs"]:
                if reports := finished_reports(rev, experiment.get("executor"), report_at):
                    rows.append(experiment_row(rev["name"], rev, baseline, reports))
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    labels = [label for label, _ in SCORES]
    verdicts = [label for label, _, _ in VERDICTS]
    columns = ["experiment", "commit", "method", "sft.peft", "data", "sft eval loss", *labels, *verdicts]
    lines = ["| " + " | ".join(columns) + " |",
             "|" + " --- |" * len(columns)]
    for row in rows:
        loss = "-" if row["sft_eval_loss"] is None else f"{row['sft_eval_loss']:.3f}"
        scores = [interval_cell(row["scores"][label]) if row["scores"][label] else "-" for label in labels]
        tests = [verdict_cell(row["verdicts"].get(label)) for label in verdicts]
        lines.append(f"| {row['experiment']} | {row['commit']} | {row['method']} | {row['sft_peft']} | {row['data']} | "
                     f"{loss} | " + " | ".join(scores + tests) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["experiment", "commit", "method", "sft_peft", "data", "sft_eval_loss", "metric", "mean",
                         "ci_low", "ci_high", "n"])
        for row in rows:
            for label, metric in row["scores"].items():
                if metric is not None:
                    writer.writerow([row[k] for k in ("experiment", "commit", "method", "sft_peft", "data", "sft_eval_loss")]
                                    + [label, metric["mean"], metric["ci_low"], metric["ci_high"], metric["n"]])


def figure(rows: list[dict[str, Any]], path: Path) -> Path:
    bars = [{"experiment": f"{row['experiment']} ({row['sft_peft']}+{row['method']})", "metric": label,
             "value": 100 * metric["mean"], "low": 100 * metric["ci_low"], "high": 100 * metric["ci_high"]}
            for label, _ in SCORES[:2] for row in rows if (metric := row["scores"][label]) is not None]
    return bars_with_intervals(bars, "metric", "experiment", "Aligned model of each DVC experiment", path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/compare"))
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all-commits", action="store_true",
                       help="experiments of every commit, not only those based on HEAD")
    which.add_argument("--rev", default=None,
                       help="the experiments based on this commit (and its committed run) instead of HEAD's")
    args = parser.parse_args(argv)
    options = ["--all-commits"] if args.all_commits else ["--rev", args.rev] if args.rev else []
    rows = collect(show_experiments(*options))
    if not rows:
        raise SystemExit("error: no finished DVC experiment to compare (run one: dvc exp run -S method=orpo)")
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    (args.out / "compare.md").write_text(
        "# DVC experiments compared\n\nAligned model's scores in %, 95% bootstrap intervals; `data` is the DVC "
        "hash of data/curated.\n\n" + table + "\n\n![experiments](compare.png)\n")
    write_csv(rows, args.out / "compare.csv")
    figure(rows, args.out / "compare.png")
    print(table)


if __name__ == "__main__":
    main()
