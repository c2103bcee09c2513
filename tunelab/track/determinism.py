"""Compare two runs of the pipeline: same data and model hashes, same metrics?

    python -m tunelab.track.determinism RUN_A RUN_B     # two project directories after `dvc repro`

Data and model outputs are compared by the md5 DVC recorded for them in each run's `dvc.lock`
(the same hash is the same bytes). Reports (metrics, per-item samples, curves) are compared by content with what is measured rather
than computed left out: wall times, tokens per second, peak memory and the runtime ratio of code
answers, which vary from run to run on a shared machine. Exit status 1 when anything differs.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import yaml

# Keys (JSON) and columns (CSV) that are measurements of the machine, not results of the study.
MEASURED = ("_s", "minutes", "runtime", "per_second", "seconds", "peak_memory_mb", "runtime_ratio")


def results_only(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: results_only(v) for k, v in data.items() if not k.endswith(MEASURED)}
    if isinstance(data, list):
        return [results_only(v) for v in data]
    return data


def content(path: Path) -> Any:
    """A file's bytes, or for JSON, JSONL and CSV reports its values with measured fields left out."""
    if path.suffix == ".json":
        return results_only(json.loads(path.read_text()))
    if path.suffix == ".jsonl":
        return [results_only(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".csv":
        header, *rows = list(csv.reader(path.read_text().splitlines()))
        keep = [i for i, name in enumerate(header) if not name.endswith(MEASURED)]
        return [[row[i] for i in keep] for row in [header, *rows]]
    return path.read_bytes()


def cached_out_hashes(repo: Path) -> dict[str, str]:
    """md5 of every data and model output in dvc.lock (a directory's is its `.dir` hash).

    Outputs under reports/ are compared by content instead: report.md and the figures show timings.
    """
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])
            if not out["path"].startswith("reports/")}


def report_files(repo: Path) -> list[str]:
    reports = repo / "reports"
    files = [*reports.glob("*.json"), *reports.glob("plots/*.csv"), *reports.glob("samples/*.jsonl"),
             *reports.glob("eval/*/*.jsonl")]  # each variant's results (with its measured tokens/s left out)
    return sorted(str(f.relative_to(repo)) for f in files if f.name != "bench.json")


def differences(first: Path, second: Path) -> tuple[list[str], int, int]:
    """What differs between two runs, and how many outputs and report files were compared."""
    found = []
    hashes_a, hashes_b = cached_out_hashes(first), cached_out_hashes(second)
    for path in sorted(set(hashes_a) | set(hashes_b)):
        if hashes_a.get(path) != hashes_b.get(path):
            found.append(f"{path}: md5 {hashes_a.get(path)} vs {hashes_b.get(path)}")
    files_a, files_b = report_files(first), report_files(second)
    found += [f"{name}: only in one run" for name in sorted(set(files_a) ^ set(files_b))]
    for name in sorted(set(files_a) & set(files_b)):
        if content(first / name) != content(second / name):
            found.append(f"{name}: contents differ")
    return found, len(set(hashes_a) | set(hashes_b)), len(set(files_a) | set(files_b))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit("usage: python -m tunelab.track.determinism RUN_A RUN_B")
    first, second = (Path(a) for a in argv)
    for repo in (first, second):
        if not (repo / "dvc.lock").is_file():
            raise SystemExit(f"error: {repo}/dvc.lock not found; run `dvc repro` there first")
    found, outputs, reports = differences(first, second)
    for line in found:
        print(line)
    print(f"{outputs} cached outputs and {reports} report files compared: "
          + ("identical" if not found else f"{len(found)} differ"))
    raise SystemExit(1 if found else 0)


if __name__ == "__main__":
    main()
