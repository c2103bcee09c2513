"""Does starting a sandboxed program cost more when its caller holds more memory?

    python bench/sandbox_caller.py --out reports/bench_sandbox_caller.json

For each caller size (`--caller-gib`, default 0 and 3), this process first touches that much
anonymous memory (as a process holding a model would), then measures:
- `python -c pass` started by `subprocess` with no `preexec_fn` (vfork) and with an empty one
  (which makes `subprocess` fork this process), the median of `--starts` starts each;
- HumanEval's 164 canonical solutions through `tunelab.sandbox.harness.check_completion` at 2 workers;
- the median `cpu_s` of an empty program through the sandbox against a bare interpreter's.

Run against another checkout by putting it first on PYTHONPATH (the sandbox before f3712d7
confined programs in a `preexec_fn`; docs/performance.md quotes both). Not part of bench/run.py's table.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # bench.*; appended, so PYTHONPATH picks the tunelab measured


def hold_memory(gib: float) -> mmap.mmap | None:
    """Private anonymous memory of `gib` GiB with every page written, as a tensor's: fork copies its
    page tables (a shared mapping, mmap's default, would be skipped)."""
    if gib <= 0:
        return None
    size = int(gib * (1 << 30))
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for offset in range(0, size, mmap.PAGESIZE):
        memory[offset] = 1
    return memory


def start_seconds(starts: int, **popen: object) -> float:
    times = []
    for _ in range(starts):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-B", "-c", "pass"], check=True, **popen)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def bare_cpu_s() -> float:
    process = subprocess.Popen([sys.executable, "-I", "-B", "-c", "pass"])
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caller-gib", default="0,3", help="comma-separated caller sizes in GiB (default: 0,3)")
    parser.add_argument("--starts", type=int, default=20, help="starts timed per way of starting (default: 20)")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers for the 164 solutions (default: 2)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = parser.parse_args()

    from bench.sandbox import timed_pool
    from tunelab.sandbox import harness, runner
    from tunelab.tasks.humaneval import load_humaneval

    runner.isolation()  # the one-time probe, outside every timing
    problems = load_humaneval()

    def check(problem: dict) -> bool:
        return harness.check_completion(problem, problem["canonical_solution"], 10.0, 1024)["passed"]

    rows = []
    for gib in (float(size) for size in args.caller_gib.split(",")):
        held = hold_memory(gib)
        seconds, passed = timed_pool(check, problems, args.workers, f"164 solutions beside {gib:g} GiB")
        rows.append({
            "caller_gib": gib,
            "start_s_vfork": round(start_seconds(args.starts), 4),
            "start_s_preexec_fn": round(start_seconds(args.starts, preexec_fn=lambda: None), 4),
            "humaneval_164_s": round(seconds, 2), "passed": passed,
            "empty_program_cpu_s": round(statistics.median(runner.run_program("pass").cpu_s for _ in range(15)), 4),
            "bare_interpreter_cpu_s": round(statistics.median(bare_cpu_s() for _ in range(15)), 4),
        })
        print(json.dumps(rows[-1]), flush=True)
        del held
    result = {"sandbox": runner.__file__, "workers": args.workers, "rows": rows, "date": time.strftime("%Y-%m-%d")}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
