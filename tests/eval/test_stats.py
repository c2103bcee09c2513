"""Intervals, paired tests and pass@k against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from tunelab.eval.evaluate import paired_tests
from tunelab.eval.stats import (
    bootstrap_ci,
    mcnemar,
    paired_bootstrap,
    paired_test,
    pass_at_k,
    sign_flip_p_value,
    summarise,
)


def test_pass_at_k_matches_the_closed_form():
    assert pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)  # one of five samples passes
    assert pass_at_k(5, 1, 5) == 1.0  # any draw of all five includes the passing one
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs():
    only_a = [1.0] * 6 + [0.0] * 4  # six items only a solved, none only b solved, four both failed
    only_b = [0.0] * 10
    result = mcnemar(only_a, only_b)
    assert (result["only_a"], result["only_b"], result["n"]) == (6, 0, 10)
    assert result["p_value"] == pytest.approx(2 / 2 ** 6)
    assert mcnemar([1.0, 0.0], [0.0, 1.0])["p_value"] == 1.0  # one each way: no evidence


def test_paired_bootstrap_separates_a_shift_from_noise():
    a = [0.5 + 0.01 * i for i in range(40)]
    shifted = paired_bootstrap([x + 0.2 for x in a], a)
    assert shifted["diff"] == pytest.approx(0.2) and shifted["p_value"] < 0.01
    noise = paired_bootstrap([0.1, -0.1] * 20, [0.0] * 40)
    assert noise["ci_low"] < 0 < noise["ci_high"] and noise["p_value"] > 0.5
    same = paired_bootstrap(a, a)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0


def test_compare_picks_mcnemar_for_pass_fail_and_flags_significance():
    result = paired_test([1.0] * 8 + [0.0] * 2, [0.0] * 10, pass_fail=True)
    assert result["test"] == "mcnemar" and result["significant"]
    assert paired_test([0.7, 0.2], [0.5, 0.1], pass_fail=False)["test"] == "paired_bootstrap"


def test_no_items_means_no_estimate_rather_than_a_zero():
    assert summarise([]) == {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    for test in (paired_bootstrap, mcnemar):
        with pytest.raises(ValueError, match="at least one pair"):
            test([], [])
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])
    assert bootstrap_ci([0.4]) == (0.4, 0.4)  # one value: every resample is that value
    low, high = bootstrap_ci([0.0, 1.0] * 20)
    assert 0.3 < low < 0.5 < high < 0.7


def _result(pass_at_1: list[float], runtime: list[float | None]) -> dict:
    return {"scores": {"leetcode": {"pass@1": pass_at_1, "runtime_ratio": runtime}}}


def test_compare_variants_tests_only_items_both_variants_scored():
    results = {
        "base": _result([0.0, 0.0, 0.0], [None, None, None]),
        "sft": _result([1.0, 1.0, 0.0], [1.2, 0.9, None]),
        "aligned": _result([1.0, 0.0, 0.0], [1.1, None, None]),
    }
    comparisons = paired_tests(results)
    # Runtime exists for passing solutions only: base passed nothing, so sft vs base has no
    # runtime pairs and no runtime test, while aligned vs sft shares one passing item.
    assert set(comparisons["sft_vs_base"]) == {"leetcode.pass@1"}
    assert comparisons["aligned_vs_sft"]["leetcode.runtime_ratio"]["n"] == 1
    runtime = comparisons["aligned_vs_sft"]["leetcode.runtime_ratio"]
    assert runtime["diff"] == pytest.approx(-0.1) and runtime["p_value"] == 1.0 and not runtime["significant"]
    assert comparisons["sft_vs_base"]["leetcode.pass@1"]["n"] == 3


def test_the_test_is_chosen_by_metric_not_by_values():
    # Zero lint findings on both sides and whole-number runtime ratios are 0/1 values, not passes.
    results = {
        "sft": {"scores": {"leetcode": {"pass@1": [1.0, 0.0], "lint_per_100_lines": [0.0, None],
                                        "runtime_ratio": [1.0, None]}, "humaneval_sampled": {"pass@5": [1.0, 0.0]}}},
        "aligned": {"scores": {"leetcode": {"pass@1": [1.0, 1.0], "lint_per_100_lines": [0.0, 0.0],
                                            "runtime_ratio": [0.0, 1.0]}, "humaneval_sampled": {"pass@5": [1.0, 1.0]}}},
    }
    tests = paired_tests(results)["aligned_vs_sft"]
    assert tests["leetcode.pass@1"]["test"] == "mcnemar"
    for metric in ("leetcode.lint_per_100_lines", "leetcode.runtime_ratio", "humaneval_sampled.pass@5"):
        assert tests[metric]["test"] == "paired_bootstrap", metric
    with pytest.raises(ValueError, match="pass/fail"):
        paired_test([0.5], [1.0], pass_fail=True)


def test_sign_flip_p_value_is_exact_for_few_items_and_never_zero():
    assert sign_flip_p_value([-0.1]) == 1.0  # one item cannot show anything
    assert sign_flip_p_value([0.3] * 5) == pytest.approx(2 / 2 ** 5)  # only all-plus and all-minus reach it
    assert sign_flip_p_value([0.3] * 12) == pytest.approx(2 / 2 ** 12)  # still exact: below Monte Carlo's 1/2001
    assert 0 < sign_flip_p_value([0.3] * 40) < 0.001  # Monte Carlo: (0 + 1) / (resamples + 1)


def test_the_interval_is_the_percentile_bootstrap_and_stays_within_the_data():
    # Two passes in 40: a percentile interval cannot go below 0 (a basic or normal one would).
    low, high = bootstrap_ci([1.0] * 2 + [0.0] * 38)
    assert low == 0.0 and 0.05 < high <= 0.15
    assert bootstrap_ci([0.1 * i for i in range(30)], seed=0) == bootstrap_ci([0.1 * i for i in range(30)], seed=0)
