"""Uncertainty for per-item scores: percentile bootstrap intervals for means."""

from __future__ import annotations

import random
from statistics import mean


def bootstrap_ci(values: list[float], resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(mean(rng.choices(values, k=n)) for _ in range(resamples))
    low = means[int((1 - level) / 2 * resamples)]
    high = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return (low, high)


def summarise(values: list[float], seed: int = 0) -> dict[str, float]:
    low, high = bootstrap_ci(values, seed=seed)
    return {"mean": mean(values) if values else 0.0, "ci_low": low, "ci_high": high, "n": len(values)}
