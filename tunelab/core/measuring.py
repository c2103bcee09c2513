"""Measurements of the machine that reports carry beside results: wall time, peak memory, sizes on disk.

These vary from run to run; `tunelab.track.determinism` leaves them out when it compares two runs.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU) or peak allocated CUDA memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def directory_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


class Stopwatch:
    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start
