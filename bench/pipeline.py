"""Wall time of each DVC stage, of a method switch, and of a no-op `dvc repro`.

    python bench/pipeline.py [--switch-to orpo] [--out reports/bench_pipeline.json]

Runs in the current DVC workspace: every stage is forced to re-run one at a time (so the
numbers are per stage), then `dvc exp run -S method=<switch-to>` after the finished run, then a
no-op `dvc repro`, then the original method is restored from DVC's run cache. Prints a markdown
table with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

STAGES = ["base", "generate", "curate", "sft", "preference", "align", "evaluate", "report"]


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds, result.stdout + result.stderr


def machine() -> str:
    cpu = "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        names = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switch-to", default="orpo")
    parser.add_argument("--out", type=Path, default=Path("reports/bench_pipeline.json"))
    args = parser.parse_args()
    method = yaml.safe_load(Path("params.yaml").read_text())["method"]

    stage_seconds = {}
    for stage in STAGES:
        stage_seconds[stage], _ = timed(["dvc", "repro", "--force", "--single-item", stage])
        print(f"{stage}: {stage_seconds[stage]:.1f} s", flush=True)
    switch_seconds, output = timed(["dvc", "exp", "run", "-S", f"method={args.switch_to}"])
    switched = re.findall(r"Running stage '(\w+)'", output)
    noop_seconds, _ = timed(["dvc", "repro"])
    timed(["dvc", "exp", "run", "-S", f"method={method}"])  # back to the original, from the run cache

    total = sum(stage_seconds.values())
    result = {
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "stage_seconds": stage_seconds,
        "total_seconds": total,
        "method_switch": {"to": args.switch_to, "seconds": switch_seconds, "stages_run": switched,
                          "fraction_of_full": switch_seconds / total},
        "noop_repro_seconds": noop_seconds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nMachine: {result['machine']}; date {result['date']}\n")
    print("| stage | wall time (s) |\n| --- | --- |")
    for stage, seconds in stage_seconds.items():
        print(f"| {stage} | {seconds:.0f} |")
    print(f"| **total** | **{total:.0f}** |")
    print(f"\n`dvc exp run -S method={args.switch_to}`: {switch_seconds:.0f} s, ran {', '.join(switched)} "
          f"({100 * switch_seconds / total:.0f}% of the full run); no-op `dvc repro`: {noop_seconds:.1f} s")


if __name__ == "__main__":
    main()
