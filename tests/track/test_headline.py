"""The headline numbers, DVC's only metrics file (what `dvc exp show` prints is checked in test_e2e)."""

from __future__ import annotations

import yaml

from tests.conftest import REPO
from tunelab.track.headline import headline


def score(mean: float, low: float, high: float) -> dict:
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": 200}


def reports() -> dict:
    variants = {name: {"ifeval": {"prompt_level_loose": score(*held_out)}, "humaneval": {"pass@1": score(*code)}}
                for name, held_out, code in [("base", (0.148, 0.099, 0.197), (0.125, 0.025, 0.225)),
                                             ("sft", (0.138, 0.094, 0.187), (0.15, 0.05, 0.275)),
                                             ("aligned", (0.19212, 0.138, 0.2463), (0.125, 0.025, 0.225)),
                                             ("int8", (0.084, 0.049, 0.123), (0.0, 0.0, 0.0))]}
    comparisons = {"aligned_vs_sft": {"ifeval.prompt_level_loose": {"diff": 0.05419, "p_value": 0.0432853}},
                   "aligned_vs_base": {"humaneval.pass@1": {"diff": 0.0, "p_value": 1.0}}}  # no held-out test
    return {"evaluate": {"variants": variants, "comparisons": comparisons},
            "sft": {"eval_loss": 1.568912, "runtime_s": 300.0},
            "align": {"runtime_s": 222.0, "validation": {
                "aligned": {"prompt_level_loose": 0.26667}, "sft": {"prompt_level_loose": 0.2},
                "aligned_wins_over_sft": 5, "aligned_losses_to_sft": 3}}}


def test_headline_leads_with_what_a_narrow_screen_keeps():
    numbers = headline(reports())
    # DVC folds metrics columns from the right: the aligned score and its difference from sft come first.
    assert list(numbers)[:7] == ["aligned", "aligned-sft", "p_sft", "sft", "base", "aligned-base", "p_base"]
    assert numbers["aligned"] == 19.2 and numbers["sft"] == 13.8 and numbers["base"] == 14.8  # % with one decimal
    assert numbers["aligned-sft"] == 5.4 and numbers["p_sft"] == 0.043
    assert numbers["aligned-base"] is None and numbers["p_base"] is None  # not computed: empty, never 0
    assert numbers["humaneval"] == {"aligned": 12.5, "sft": 15.0, "base": 12.5}
    assert numbers["sft_eval_loss"] == 1.5689 and numbers["train_minutes"] == 8.7
    assert numbers["validation"] == {"aligned": 26.7, "sft": 20.0, "wins": 5, "losses": 3}
    assert numbers["int8"] == 8.4
    assert numbers["interval"]["aligned"] == {"low": 13.8, "high": 24.6}
    assert numbers["interval"]["humaneval"]["sft"] == {"low": 5.0, "high": 27.5}


def test_small_p_values_keep_two_significant_digits():
    evaluation = reports()
    evaluation["evaluate"]["comparisons"]["aligned_vs_sft"]["ifeval.prompt_level_loose"]["p_value"] = 0.000536
    assert headline(evaluation)["p_sft"] == 0.00054


def test_headline_is_the_only_dvc_metrics_file_and_every_report_stays_an_output():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

    def declared(kind: str) -> list[str]:
        return [path for stage in stages.values() for entry in stage.get(kind, [])
                for path in (entry if isinstance(entry, dict) else {entry: None})]

    assert declared("metrics") == ["reports/headline.json"]
    reports = [path for path in declared("outs") if path.startswith("reports/") and path.endswith(".json")]
    assert len(reports) == 11 and "reports/evaluate.json" in reports and "reports/reward.json" in reports
