"""The machine a run measured, and its fp32 matmul throughput: the peak that MFU is a share of.

The peak is measured, not taken from a datasheet: a 2-core VM's real fp32 GEMM rate (shared host,
its AVX2 units, torch's threads) is what training could at best reach on it.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bench.common import Context, Figure, median, size_flag


def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("matmul peak")
    size_flag(group, "--matmul-size", 2048, 256, "side of the square fp32 matrices multiplied")
    size_flag(group, "--matmul-repeats", 10, 3, "timed matmuls; the median counts")


def _cpuinfo_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit(repo: Path) -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def describe(context: Context) -> dict[str, Any]:
    import torch

    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "cpu_model": _cpuinfo_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": now.date().isoformat(),
        "started_utc": now.isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # a shared machine shows here
        "commit": _git_commit(context.repo),
    }


def matmul_gflops(size: int, repeats: int) -> list[float]:
    """GFLOP/s of each timed `torch.mm` of two size x size fp32 matrices (2 n^3 FLOPs each)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm-up: thread pool start, page faults on `out`
    rates = []
    for _ in tqdm(range(repeats), desc=f"fp32 matmul {size}x{size}", unit="mm"):
        began = time.perf_counter()
        torch.mm(a, b, out=out)
        rates.append(2 * size**3 / (time.perf_counter() - began) / 1e9)
    return rates


def run(args: Any, context: Context) -> list[Figure]:
    rates = matmul_gflops(args.matmul_size, args.matmul_repeats)
    return [Figure(
        name="fp32 matmul peak (torch.mm)", value=median(rates), unit="GFLOP/s", samples=rates,
        note=f"{args.matmul_size}x{args.matmul_size} fp32, median of {len(rates)}, {context.threads} threads "
             "(the thread count training uses); the denominator of every MFU figure",
        details={"size": args.matmul_size, "threads": context.threads},
    )]
