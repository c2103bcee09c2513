"""The report's preference line for every source mix, a code-only study (no verifiable prompts) included."""

from tunelab.track.report import preference_summary


def test_the_preference_line_holds_for_a_code_only_study_and_the_default():
    code_only = {"pairs": 24, "pairs_by_source": {"verifiable": 0, "code": 24, "reward_model": 0, "judge": 0}}
    assert preference_summary(code_only) == "24 pairs (code 24)"  # the code profile's report crashed here
    default = {"pairs": 63, "prompts": 90, "margin_mean": 0.871, "pairs_by_source": {"verifiable": 63, "code": 0}}
    assert preference_summary(default) == "63 pairs from 90 prompts, mean margin 0.87 (verifiable 63)"
