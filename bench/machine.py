"""The machine a run measured, and its fp32 matmul throughput: the peak that MFU is a share of.

The peak is measured, not taken from a datasheet: a 2-core VM's real fp32 GEMM rate (shared host,
its AVX2 units, torch's threads) is what training could at best reach on it. A square 2048 matmul
is the peak the issue defines MFU against; the model-shaped rate is what the same cores reach on
the base model's own linear layers (`--matmul-rows` tokens against every nn.Linear weight, the
tied LM head included, weighted by FLOPs): SmolLM2-135M is 576 wide, and matmuls that narrow run
well below the square peak, so it is the ceiling an MFU at this model size can approach. The same
model's largest per-layer shape (its MLP projection) in bf16 against fp32 shows what TRL's bf16
default costs on a CPU without bf16 units.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bench.common import Context, Figure, median, size_flag


def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("matmul peak")
    size_flag(group, "--matmul-size", 2048, 512, "side of the square fp32 matrices multiplied")
    size_flag(group, "--matmul-repeats", 10, 3, "timed matmuls (passes over the model's shapes); the median counts")
    size_flag(group, "--matmul-rows", 2048, 128, "tokens in the model-shaped matmuls (~ a training batch: 4 x 512)")
    size_flag(group, "--bf16-rows", 512, 64, "tokens in the bf16-against-fp32 matmul (bf16 may be ~30x slower "
              "than fp32 here: keep it small)")


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


def linear_shapes(base_dir: Path) -> Counter:
    """(in, out) features of every nn.Linear of the model, counted (the tied LM head is one of them)."""
    import torch

    from tunelab.core.models import load_variant

    model = load_variant(base_dir)
    return Counter(tuple(m.weight.shape[::-1]) for m in model.modules() if isinstance(m, torch.nn.Linear))


def model_shaped_gflops(shapes: Counter, rows: int, repeats: int, dtype: str = "float32") -> list[float]:
    """GFLOP/s of each pass of `rows` x in @ in x out matmuls over `shapes`, each shape weighted by
    how often the model has it (timed once per pass, its time multiplied by the count)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    kind = getattr(torch, dtype)
    operands = {(i, o): (torch.randn(rows, i, generator=generator).to(kind),
                         torch.randn(i, o, generator=generator).to(kind), torch.empty(rows, o, dtype=kind))
                for i, o in shapes}
    flops = sum(2 * rows * i * o * count for (i, o), count in shapes.items())
    for a, b, out in operands.values():
        torch.mm(a, b, out=out)  # warm-up
    rates = []
    for _ in tqdm(range(repeats), desc=f"{dtype} matmul, model shapes x {rows} rows", unit="pass"):
        seconds = 0.0
        for shape, (a, b, out) in operands.items():
            began = time.perf_counter()
            torch.mm(a, b, out=out)
            seconds += (time.perf_counter() - began) * shapes[shape]
        rates.append(flops / seconds / 1e9)
    return rates


def run(args: Any, context: Context) -> list[Figure]:
    rates = matmul_gflops(args.matmul_size, args.matmul_repeats)
    peak = Figure(
        name="fp32 matmul peak (torch.mm)", value=median(rates), unit="GFLOP/s", samples=rates,
        note=f"{args.matmul_size}x{args.matmul_size} fp32, median of {len(rates)}, {context.threads} threads "
             "(the thread count training uses); the denominator of every MFU figure",
        details={"size": args.matmul_size, "threads": context.threads},
    )
    shapes = linear_shapes(context.base_dir)
    shaped = model_shaped_gflops(shapes, args.matmul_rows, args.matmul_repeats)
    listed = ", ".join(f"{count}x {i}->{o}" for (i, o), count in sorted(shapes.items(), key=lambda kv: -kv[1]))
    return [peak, Figure(
        name="fp32 matmul at the model's shapes", value=median(shaped), unit="GFLOP/s", samples=shaped,
        baseline=peak.value, baseline_name="square peak",
        note=f"{args.matmul_rows} rows through every linear layer's weight shape, FLOP-weighted, median of "
             f"{len(shaped)} passes: the ceiling MFU at this model's width can approach",
        details={"rows": args.matmul_rows, "shapes": listed, "threads": context.threads},
    ), bf16_figure(shapes, args)]


def bf16_figure(shapes: Counter, args: Any) -> Figure:
    inputs, outputs = max((s for s in shapes if shapes[s] > 1), key=lambda s: s[0] * s[1])  # per layer, not the LM head
    largest = Counter({(inputs, outputs): 1})
    fp32 = model_shaped_gflops(largest, args.bf16_rows, args.matmul_repeats)
    bf16 = model_shaped_gflops(largest, args.bf16_rows, args.matmul_repeats, "bfloat16")
    shape = f"{args.bf16_rows}x{inputs} @ {inputs}x{outputs}"
    return Figure(
        name=f"bf16 matmul {shape} (TRL's default precision)", value=median(bf16), unit="GFLOP/s",
        samples=bf16, baseline=median(fp32), baseline_name="fp32, same shape", baseline_samples=fp32,
        note="the model's largest per-layer matmul; why TRL's defaults train slowly on this CPU (bf16 autocast "
             "runs the matmuls in bf16); median of each",
        details={"shape": shape},
    )
