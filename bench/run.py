"""Every benchmark in one run: figures to reports/bench.json and a markdown table for docs/performance.md.

    make bench                          # fresh-clone pipeline runs, then this at full size (docs/performance.md table)
    python bench/run.py --quick         # smoke: tiny sizes, seconds per family -> .tunelab/bench/quick.json
    python bench/run.py --only generation,sandbox --gen-repeats 5
    python bench/run.py --only pipeline --merge --repo CLONE --repro-log LOG --switch-log LOG   # add to bench.json

Families, in the order they run: matmul (the fp32 peak MFU is a share of), generation, training,
online_rl (a GRPO step split into generation, rewards and training), sandbox, pipeline. Each
figure is TuneLab's number, its baseline measured in the same run, their ratio (value / baseline)
and the issue's target; noisy figures are medians over repeats. A family that fails is recorded in the JSON with its error and the others still run (exit status 1).
--merge keeps the figures of the families not run now from the existing --out file, each with the
run (machine, date, commit, command) that measured it, and the table shows them all.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script: import bench.* and tunelab.* from the repo root, never bench/'s own files as
# top-level modules (bench/sandbox.py must not shadow anything named `sandbox`).
sys.path[0] = str(REPO)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench import generation, machine, online_rl, pipeline, sandbox, training  # noqa: E402
from bench.common import Context, Figure, apply_sizes, markdown_table  # noqa: E402

FAMILIES = ("matmul", "generation", "training", "online_rl", "sandbox", "pipeline")
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
log = logging.getLogger("bench")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny sizes (each size flag's --quick value); writes .tunelab/bench/quick.json")
    parser.add_argument("--only", default=",".join(FAMILIES), help=f"comma-separated families to run (default: all: {','.join(FAMILIES)})")
    parser.add_argument("--repo", type=Path, default=Path("."),
                        help="the repository measured: its params, data, models/base and dvc pipeline (default: .)")
    parser.add_argument("--params", type=Path, default=None, help="params file (default: REPO/params.yaml)")
    parser.add_argument("--model", type=Path, default=Path("models/base"),
                        help="base model dir, relative to --repo; built from `base` params into --work-dir when absent "
                             "(default: models/base)")
    parser.add_argument("--out", type=Path, default=None,
                        help="figures JSON (default: reports/bench.json; --quick: .tunelab/bench/quick.json)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other families' figures (and their runs) from the existing --out file")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rebuild the table from the --out file (and write it into --readme)")
    parser.add_argument("--readme", type=Path, default=None,
                        help=f"README whose {README_START} ... {README_END} block gets this run's table (not with --quick)")
    parser.add_argument("--work-dir", type=Path, default=Path(".tunelab/bench"),
                        help="scratch: a built base model, trained adapters, server logs (default: .tunelab/bench)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for the whole run (matmul, generation, training, llama.cpp); 0 = torch's default")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the generation runs (default: 0)")
    for family in (machine, generation, training, online_rl, sandbox, pipeline):
        family.add_arguments(parser)
    args = parser.parse_args(argv)
    apply_sizes(args)
    unknown = sorted(set(args.only.split(",")) - set(FAMILIES))
    if unknown:
        parser.error(f"--only: unknown family '{unknown[0]}' (allowed: {', '.join(FAMILIES)})")
    if args.quick and args.readme:
        parser.error("--readme is not allowed with --quick: smoke figures must not reach the README")
    return args


def header(runs: list[dict]) -> str:
    """Which run measured which families: machine, date, commit, load, command."""
    lines = []
    for run in runs:
        m = run["machine"]
        lines.append(
            f"- {', '.join(run['families'])}: {m['cpu_model']}, {m['usable_cores']} cores, {m['memory_gib']} GiB, "
            f"torch {m['torch']} ({m['torch_threads']} threads); {m['started_utc']}; commit {m['commit']}; "
            f"1-min load average {m['load_average_at_start'][0]} at start, {run['load_average_at_end'][0]} at end; "
            f"`{' '.join(run['command'])}`"
            + (" (smoke sizes: not results)" if run["quick"] else ""))
    return "\n".join(lines)


def merged(out: Path, run: dict, figures: list[Figure]) -> tuple[list[dict], list[Figure]]:
    """Earlier runs' figures of the families not run now, then this run's, in FAMILIES order."""
    earlier = json.loads(out.read_text()) if out.is_file() else {"runs": [], "figures": []}
    runs = []
    for old in earlier.get("runs", []):
        kept = [family for family in old["families"] if family not in run["families"]]
        if kept:
            runs.append({**old, "families": kept})
    figures = [Figure.from_dict(f) for f in earlier.get("figures", [])
               if f.get("family") in FAMILIES and f["family"] not in run["families"]] + figures
    return runs + [run], sorted(figures, key=lambda f: FAMILIES.index(f.family))


def update_readme(path: Path, block: str) -> None:
    text = path.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{path} has no {README_START} ... {README_END} block to fill")
    path.write_text(pattern.sub(lambda _: f"{README_START}\n{block}\n{README_END}", text))


def render(out: Path, readme: Path | None) -> int:
    """The table of an earlier run, from its figures file: after a change to how the table is drawn."""
    if not out.is_file():
        raise SystemExit(f"error: --render: {out} does not exist (run the benchmarks first)")
    saved = json.loads(out.read_text())
    block = header(saved["runs"]) + "\n\n" + markdown_table([Figure.from_dict(f) for f in saved["figures"]])
    print("\n" + block + "\n")
    if readme:
        update_readme(readme, block)
        log.info("wrote the table into %s", readme)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.render:
        return render(args.out or Path("reports/bench.json"), args.readme)
    import torch

    from tunelab.core.io import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    repo = args.repo.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    context = Context(repo=repo, params_path=args.params or repo / "params.yaml", model=repo / args.model,
                      work=args.work_dir.resolve(), threads=torch.get_num_threads(), quick=args.quick, seed=args.seed)
    out = args.out or (args.work_dir / "quick.json" if args.quick else Path("reports/bench.json"))
    log.info("bench settings: %s", json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                              sort_keys=True))
    machine_info = machine.describe(context)
    log.info("machine: %s", json.dumps(machine_info))

    selected = [family for family in FAMILIES if family in args.only.split(",")]
    figures: list[Figure] = []
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    peaks: dict[str, float] = {}  # matmul GFLOP/s: the square peak and the model-shaped ceiling
    measure = {
        "matmul": lambda: machine.run(args, context),
        "generation": lambda: generation.run(args, context),
        "training": lambda: training.run(args, context, peaks),
        "online_rl": lambda: online_rl.run(args, context),
        "sandbox": lambda: sandbox.run(args, context),
        "pipeline": lambda: pipeline.run(args, context),
    }
    for family in selected:
        log.info("=== %s", family)
        began = time.perf_counter()
        try:
            found = measure[family]()
        except Exception as err:  # noqa: BLE001 - one family's failure must not lose the others' figures
            log.error("%s failed:\n%s", family, traceback.format_exc())
            errors[family] = f"{type(err).__name__}: {err}"
            found = []
        seconds[family] = round(time.perf_counter() - began, 1)
        for figure in found:
            figure.family = family
        if family == "matmul" and found:
            peaks.update(square=found[0].value, model_shaped=found[1].value)
        figures += found

    run = {"families": selected, "machine": machine_info, "quick": args.quick, "families_s": seconds, "errors": errors,
           "command": ["bench/run.py", *(sys.argv[1:] if argv is None else argv)],
           "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    runs, figures = merged(out, run, figures) if args.merge else ([run], figures)
    write_json(out, {"runs": runs, "figures": [f.as_dict() for f in figures]})
    block = header(runs) + "\n\n" + markdown_table(figures)
    print("\n" + block + "\n")
    for family, error in errors.items():
        print(f"error: {family}: {error.splitlines()[0] if error else ''}", file=sys.stderr)
    if args.readme and not errors:
        update_readme(args.readme, block)
        log.info("wrote the table into %s", args.readme)
    log.info("wrote %s", out)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
