"""Seeds are part of the answer: the default study under several seeds, as DVC experiments, and the
mean and spread of its headline numbers across them.

    python -m tunelab.track.seeds run --seeds 0 1 2                  # sft onwards, generation fixed
    python -m tunelab.track.seeds run --seeds 0 1 2 --scope all      # the whole DAG
    python -m tunelab.track.seeds run --seeds 0 1 2 --label orpo -S method=orpo
    python -m tunelab.track.seeds table --out reports/seeds          # seeds.md, seeds.json, seeds.png

`run` runs one experiment per seed, named seeds-<label>-<scope>-<seed>, one after another, each in
a copy of the workspace (`dvc exp run --temp`, so the workspace is left alone). Not through
`dvc queue`: on 2 cores two runs at once are no faster than one after the other, and in the tests
a queue started soon after a `dvc queue stop` got no worker and waited for nothing. Scope
`training` sets the seeds of everything from sft on (SFT's data order and adapter initialisation,
the preference answers' sampling, alignment's order and initialisation) and holds generation,
curation and every prompt set fixed, so the held-out set and base's score are the same in every
run; scope `all` also seeds generation and curation. Seed 0 of `training` is the committed
default run, which DVC's run cache returns without training again.

`table` finds every finished seeds-* experiment based on HEAD (or on each `--rev`) in DVC's own
records (`dvc exp show --json`), reads its reports/evaluate.json from the experiment's commit, and
writes, per label and scope, each seed's held-out prompt-level loose accuracy of base, sft and
aligned and the paired differences, with their mean, standard deviation and range. A
method beats another only where its difference stays clear of the seed spread, not of one run's
interval.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path
from typing import Any

from tunelab.track.compare import ReportReader, committed_report, finished_reports, show_experiments

SCOPES = {
    "training": ("sft.optim.seed", "preference.sampling_seed", "align.optim.seed"),
    "all": ("generate.seed", "curate.seed", "sft.optim.seed", "preference.sampling_seed", "align.optim.seed"),
}
PREFIX = "seeds"
# (label, where in reports/evaluate.json): the study's headline numbers.
HEADLINE = (
    ("base", ("variants", "base", "ifeval", "prompt_level_loose", "mean")),
    ("sft", ("variants", "sft", "ifeval", "prompt_level_loose", "mean")),
    ("aligned", ("variants", "aligned", "ifeval", "prompt_level_loose", "mean")),
    ("sft - base", ("comparisons", "sft_vs_base", "ifeval.prompt_level_loose", "diff")),
    ("aligned - sft", ("comparisons", "aligned_vs_sft", "ifeval.prompt_level_loose", "diff")),
    ("aligned - base", ("comparisons", "aligned_vs_base", "ifeval.prompt_level_loose", "diff")),
)


def experiment_name(label: str, scope: str, seed: int) -> str:
    return f"{PREFIX}-{label}-{scope}-{seed}"


def seed_overrides(scope: str, seed: int) -> list[str]:
    return [f"{key}={seed}" for key in SCOPES[scope]]


def _dvc(*arguments: str) -> None:
    command = ["dvc", *arguments]
    if subprocess.run(command).returncode:
        raise SystemExit(f"error: `{' '.join(command)}` failed (its output is above)")


def run(seeds: list[int], scope: str, label: str, overrides: list[str]) -> list[str]:
    """Run one experiment per seed, one after another; returns the experiments' names."""
    names = []
    for seed in seeds:
        name = experiment_name(label, scope, seed)
        settings = [option for override in [*overrides, *seed_overrides(scope, seed)] for option in ("-S", override)]
        # A re-run replaces its namesake. Not `dvc exp run --force`: that also re-runs every stage.
        subprocess.run(["dvc", "exp", "remove", name], capture_output=True)  # fails harmlessly if there is none
        _dvc("exp", "run", "--temp", "-n", name, *settings)
        names.append(name)
    return names


def _lookup(document: dict[str, Any], path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(document, dict) or key not in document:
            return None
        document = document[key]
    return document if isinstance(document, (int, float)) else None


def seed_runs(shown: list[dict[str, Any]], report_at: ReportReader = committed_report) -> dict[tuple[str, str], dict[int, dict[str, float | None]]]:
    """{(label, scope): {seed: {headline label: value}}} of every finished seeds-* experiment shown."""
    groups: dict[tuple[str, str], dict[int, dict[str, float | None]]] = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                parts = (rev.get("name") or "").split("-")
                if parts[0] != PREFIX or len(parts) < 4 or parts[-2] not in SCOPES:
                    continue
                if not (reports := finished_reports(rev, experiment.get("executor"), report_at)):
                    continue
                evaluation = reports["evaluate"]
                values = {label: _lookup(evaluation, path) for label, path in HEADLINE}
                groups.setdefault(("-".join(parts[1:-2]), parts[-2]), {})[int(parts[-1])] = values
    return groups


def spread(values: list[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation (0 for one seed), range and count of one number across seeds."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "seeds": len(values)}


def summarise_seeds(groups: dict[tuple[str, str], dict[int, dict[str, float | None]]]) -> list[dict[str, Any]]:
    summaries = []
    for (label, scope), by_seed in sorted(groups.items()):
        numbers = {}
        for name, _ in HEADLINE:
            values = [run[name] for run in by_seed.values() if run[name] is not None]
            if values:
                numbers[name] = spread(values)
        summaries.append({"label": label, "scope": scope, "seeds": dict(sorted(by_seed.items())), "spread": numbers})
    return summaries


def markdown_table(summaries: list[dict[str, Any]]) -> str:
    """One row per label, scope and seed, then its mean ± SD and range; in % and points."""
    columns = [name for name, _ in HEADLINE]
    lines = ["| label | scope | seed | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 3)]
    for summary in summaries:
        for seed, values in summary["seeds"].items():
            cells = ["-" if values[name] is None else f"{100 * values[name]:.1f}" for name in columns]
            lines.append(f"| {summary['label']} | {summary['scope']} | {seed} | " + " | ".join(cells) + " |")
        cells = [f"**{100 * s['mean']:.1f} ± {100 * s['sd']:.1f}** ({100 * s['min']:.1f} to {100 * s['max']:.1f})"
                 if (s := summary["spread"].get(name)) else "-" for name in columns]
        lines.append(f"| {summary['label']} | {summary['scope']} | mean ± SD (range) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(summaries: list[dict[str, Any]], path: Path) -> Path:
    """Each seed as a dot and the mean ± SD as a bar, for every headline number and group."""
    from tunelab.track.figures import _pyplot, _save

    plt = _pyplot()
    columns = [name for name, _ in HEADLINE]
    figure_, axis = plt.subplots(figsize=(10, 4.6))
    width = 0.8 / max(1, len(summaries))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, summary in enumerate(summaries):
        colour = colours[index % len(colours)]
        for position, name in enumerate(columns):
            x = position + (index - (len(summaries) - 1) / 2) * width
            values = [100 * run[name] for run in summary["seeds"].values() if run[name] is not None]
            if not values:
                continue
            s = summary["spread"][name]
            axis.errorbar([x], [100 * s["mean"]], yerr=[100 * s["sd"]], fmt="_", markersize=14, capsize=4,
                          color=colour, label=f"{summary['label']} ({summary['scope']}, {s['seeds']} seeds)"
                          if position == 0 else None)
            axis.scatter([x] * len(values), values, color=colour, s=14, alpha=0.7)
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xticks(range(len(columns)))
    axis.set_xticklabels(columns)
    axis.set_ylabel("held-out prompt loose\n% (scores), points (differences)")
    axis.set_title("Across seeds: each run a dot, mean ± SD a bar")
    axis.legend(fontsize=9, loc="best")
    return _save(figure_, path)


def table(out: Path, revs: list[str] | None = None) -> list[dict[str, Any]]:
    summaries = summarise_seeds(seed_runs(show_experiments(*[option for rev in revs or [] for option in ("--rev", rev)])))
    if not summaries:
        raise SystemExit("error: no finished seeds-* experiment to summarise; run one first: "
                         "python -m tunelab.track.seeds run --seeds 0 1 2")
    out.mkdir(parents=True, exist_ok=True)
    text = markdown_table(summaries)
    (out / "seeds.md").write_text(
        "# The study across seeds\n\nHeld-out prompt-level loose accuracy (%) and paired differences (points) of "
        "each seed's run; `python -m tunelab.track.seeds table`.\n\n" + text + "\n\n![seeds](seeds.png)\n")
    (out / "seeds.json").write_text(json.dumps(
        [{**s, "seeds": {str(k): v for k, v in s["seeds"].items()}} for s in summaries], indent=1) + "\n")
    figure(summaries, out / "seeds.png")
    print(text)
    return summaries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="run the study under each seed as DVC experiments, one after another")
    runner.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    runner.add_argument("--scope", choices=sorted(SCOPES), default="training",
                        help="training: seed sft onwards, generation held fixed; all: the whole DAG")
    runner.add_argument("--label", default="default",
                        help="names this group in the table, e.g. the method the overrides choose")
    runner.add_argument("-S", "--set-param", dest="overrides", action="append", default=[],
                        help="a params.yaml override for every seed, as dvc exp run -S takes it (repeatable)")
    summary = commands.add_parser("table", help="mean and spread across seeds of every finished seeds-* experiment")
    summary.add_argument("--out", type=Path, default=Path("reports/seeds"))
    summary.add_argument("--rev", dest="revs", action="append", default=None,
                         help="experiments based on this commit instead of HEAD (repeatable: their seeds pool, "
                              "so name only commits whose study is the same)")
    args = parser.parse_args(argv)
    if args.command == "run":
        if "-" in args.label or not args.label:
            raise SystemExit(f"error: --label {args.label!r}: use letters, digits and underscores (no '-')")
        run(args.seeds, args.scope, args.label, args.overrides)
    else:
        table(args.out, args.revs)


if __name__ == "__main__":
    main()
