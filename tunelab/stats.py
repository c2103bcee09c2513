"""Uncertainty for per-item scores: bootstrap intervals, paired tests, and pass@k.

Every comparison between two variants is paired: both answered the same items, so the test
works on per-item differences (paired bootstrap) or on the items where exactly one of them
succeeded (McNemar), which is far more sensitive than comparing two independent intervals.
"""

from __future__ import annotations

import math
import random
from statistics import mean

LEVEL = 0.95
RESAMPLES = 2000


def bootstrap_ci(values: list[float], resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
                 ) -> tuple[float, float]:
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


def paired_bootstrap(a: list[float], b: list[float], resamples: int = RESAMPLES, level: float = LEVEL,
                     seed: int = 0) -> dict[str, float]:
    """Mean of a - b over paired items, its percentile interval, and a two-sided p-value.

    The p-value is twice the share of resampled mean differences on the far side of zero
    (the percentile-interval test: p < 1 - level exactly when the interval excludes 0).
    """
    if len(a) != len(b):
        raise ValueError(f"paired test needs the same items: {len(a)} vs {len(b)} values")
    if not a:
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0, "n": 0}
    diffs = [x - y for x, y in zip(a, b)]
    observed = mean(diffs)
    if all(d == 0 for d in diffs):
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0, "n": len(diffs)}
    rng = random.Random(seed)
    means = sorted(mean(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    below = sum(m <= 0 for m in means) / resamples
    above = sum(m >= 0 for m in means) / resamples
    return {
        "diff": observed,
        "ci_low": means[int((1 - level) / 2 * resamples)],
        "ci_high": means[min(resamples - 1, int((1 + level) / 2 * resamples))],
        "p_value": min(1.0, 2 * min(below, above)),
        "n": len(diffs),
    }


def mcnemar(a: list[float], b: list[float]) -> dict[str, float]:
    """Exact McNemar test for paired pass/fail items: a binomial test on the discordant pairs."""
    if len(a) != len(b):
        raise ValueError(f"paired test needs the same items: {len(a)} vs {len(b)} values")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    discordant = only_a + only_b
    tail = sum(math.comb(discordant, i) for i in range(min(only_a, only_b) + 1)) / 2 ** discordant
    return {"only_a": only_a, "only_b": only_b, "p_value": min(1.0, 2 * tail), "n": len(a)}


def compare(a: list[float], b: list[float], seed: int = 0, alpha: float = 1 - LEVEL) -> dict[str, float]:
    """a against b on the same items: McNemar for pass/fail scores, the paired bootstrap otherwise."""
    result = paired_bootstrap(a, b, seed=seed)
    if all(v in (0.0, 1.0) for v in a + b):
        exact = mcnemar(a, b)
        result.update(test="mcnemar", p_value=exact["p_value"], only_a=exact["only_a"], only_b=exact["only_b"])
    else:
        result["test"] = "paired_bootstrap"
    result["significant"] = result["p_value"] < alpha
    return result


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k from n samples of which `correct` passed (Chen et al. 2021, eq. 1)."""
    if not 0 < k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples; n is {n}")
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)
