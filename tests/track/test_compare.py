"""The experiment comparison table from `dvc exp show --json` records (the real run is in test_e2e)."""

from __future__ import annotations

from tunelab.track.compare import collect, markdown_table


def experiment_rev(method: str, prompt_loose: float, vs_base: dict, name: str = "") -> dict:
    interval = {"mean": prompt_loose, "ci_low": prompt_loose - 0.1, "ci_high": prompt_loose + 0.1, "n": 40}
    evaluate = {"variants": {"aligned": {"ifeval": {"prompt_level_loose": interval},
                                         "humaneval": {"pass@1": {"mean": None}}}},
                "comparisons": {"aligned_vs_base": {"ifeval.prompt_level_loose": vs_base}}}
    return {"name": name, "data": {
        "params": {"params.yaml": {"data": {"method": method, "sft": {"peft": "lora"}}}},
        "metrics": {"reports/evaluate.json": {"data": evaluate}, "reports/sft.json": {"data": {"eval_loss": 1.5}}},
        "deps": {"data/curated": {"hash": "826bcf30abcdef"}}}}


def test_rows_carry_intervals_and_paired_verdicts():
    significant = {"diff": 0.2, "p_value": 0.01, "significant": True}
    not_significant = {"diff": -0.025, "p_value": 1.0, "significant": False}
    queued = {"name": "m-kto", "data": {"metrics": {"reports/evaluate.json": {}}}}  # no values yet
    shown = [{"rev": "workspace"},
             {"rev": "dc2ef88aaaa", **experiment_rev("dpo", 0.175, not_significant),
              "experiments": [{"revs": [experiment_rev("orpo", 0.4, significant, name="m-orpo")]}, {"revs": [queued]}]}]
    rows = collect(shown)
    assert [(r["experiment"], r["method"], r["commit"], r["data"]) for r in rows] == [
        ("default", "dpo", "dc2ef88", "826bcf30"), ("m-orpo", "orpo", "dc2ef88", "826bcf30")]
    table = markdown_table(rows).splitlines()
    assert table[2].startswith("| default | dc2ef88 | dpo | lora | 826bcf30 | 1.500 | 17.5 [7.5, 27.5] | - | - |")
    assert table[2].endswith("| -2.5 (p=1.00) | - | - |")  # a missing comparison is '-', not a 0
    assert table[3].endswith("| **+20.0 (p=0.01)** | - | - |")  # significant: bold
