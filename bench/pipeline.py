"""Pipeline wall times: per stage of a full `dvc repro` from a fresh clone and of a method switch
(`dvc exp run -S method=orpo` after that run), read from their logs by bench/stage_times.py, and a
no-op `dvc repro` timed here in that clone.

    make bench-pipeline     # clone HEAD, log both runs under bench/logged.py, then this family (--merge)
    python bench/run.py --only pipeline --merge --repo ../tunelab-bench-clone \
        --repro-log .tunelab/bench/repro.log --switch-log .tunelab/bench/switch.log

The full runs are made before this runs (see the Makefile), not here. A run's time is its whole
command (the log's first to last line under bench/logged.py; the sum of its stages in a plain log);
a log whose command failed is refused. The no-op repro runs only when `dvc status` says everything
is up to date (otherwise it would run the pipeline); --quick times `dvc status` instead, which never
touches dvc.lock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bench.common import Context, Figure, Target, median, size_flag
from bench.stage_times import RunLog, read_log


def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("pipeline")
    group.add_argument("--repro-log", type=Path, default=None,
                       help="log of a full `dvc repro` from a fresh clone (make bench writes .tunelab/bench/repro.log)")
    group.add_argument("--switch-log", type=Path, default=None,
                       help="log of `dvc exp run -S method=orpo` after that run (make bench: .tunelab/bench/switch.log)")
    size_flag(group, "--noop-repeats", 3, 1, "timed no-op `dvc repro` runs in --repo; the median counts")


def dvc(repo: Path, *arguments: str) -> tuple[float, subprocess.CompletedProcess]:
    """(wall seconds, result) of one dvc command in `repo`, with this interpreter's venv first on PATH
    as `make` puts it (stage commands call `python -m stages.X`)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    executable = shutil.which("dvc", path=path)
    if executable is None:
        raise RuntimeError("dvc is not installed in this environment (make install)")
    began = time.perf_counter()
    result = subprocess.run([executable, *arguments], cwd=repo, capture_output=True, text=True,
                            env={**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - began, result


def noop_figure(context: Context, repeats: int) -> Figure:
    if context.quick:
        name, command, target = "no-op: `dvc status` (--quick stand-in)", ("status",), None
    else:
        name, command, target = "no-op `dvc repro`", ("repro",), Target("< 5 s", "value", "<", 5.0)
        _, status = dvc(context.repo, "status", "--json")
        if status.returncode != 0:
            return Figure(name, None, "s", target=target, note=f"dvc status failed: {status.stderr.strip()[-200:]}")
        changed = sorted(json.loads(status.stdout or "{}"))
        if changed:
            return Figure(name, None, "s", target=target,
                          note=f"not measured: {', '.join(changed)[:200]} not up to date in {context.repo}, so "
                               "`dvc repro` would run them; run the pipeline first (`make bench` does)")
    seconds = []
    for _ in tqdm(range(repeats), desc=f"dvc {' '.join(command)}", unit="run"):
        elapsed, result = dvc(context.repo, *command)
        if result.returncode != 0:
            raise RuntimeError(f"dvc {' '.join(command)} failed in {context.repo}: {result.stderr.strip()[-300:]}")
        if "Running stage" in result.stdout:
            raise RuntimeError(f"dvc {' '.join(command)} ran stages in {context.repo}: it was no no-op")
        seconds.append(elapsed)
    return Figure(name, median(seconds), "s", target=target, samples=seconds,
                  note=f"median of {len(seconds)} in {context.repo}")


def logged_run(path: Path) -> tuple[RunLog, float]:
    """The run a log records and its wall seconds; raises on a failed or unreadable run."""
    run = read_log(path.read_text(errors="replace").splitlines())
    if not run.stages:
        raise ValueError(f"{path}: no timestamped stage output (is it the log of a dvc repro?)")
    if run.status:
        raise ValueError(f"{path}: the logged command failed (exit status {run.status}); its times are no result")
    return run, run.wall_s if run.status is not None else sum(run.stages.values())


def run(args: Any, context: Context) -> list[Figure]:
    full_name = "pipeline: full `dvc repro` (fresh clone)"
    full_target = Target("< 15 min", "value", "<", 900.0)
    switch_name = "pipeline: method switch (`dvc exp run -S method=orpo`)"
    switch_target = Target("< 35% of the full run", "ratio", "<", 0.35)  # the speed issue's target
    figures = []
    full, total = logged_run(args.repro_log) if args.repro_log else (None, None)
    if full is None:
        figures.append(Figure(full_name, None, "s", target=full_target, note="no --repro-log given (make bench makes one)"))
    else:
        figures.append(Figure(full_name, total, "s", target=full_target, note=f"{total / 60:.1f} min; {args.repro_log}",
                              details={"stages_s": full.stages, "wall_s": full.wall_s}))
        figures += [Figure(f"pipeline: stage {stage}", seconds, "s", note=f"{100 * seconds / total:.0f}% of the full run")
                    for stage, seconds in full.stages.items()]
    if args.switch_log is None:
        figures.append(Figure(switch_name, None, "s", baseline_name="full dvc repro", target=switch_target,
                              note="no --switch-log given (make bench makes one)"))
    else:
        switch, seconds = logged_run(args.switch_log)
        figures.append(Figure(switch_name, seconds, "s", baseline=total, baseline_name="full dvc repro",
                              target=switch_target, note=f"re-ran {', '.join(switch.stages)}; {args.switch_log}",
                              details={"stages_s": switch.stages, "wall_s": switch.wall_s}))
    figures.append(noop_figure(context, args.noop_repeats))
    return figures
