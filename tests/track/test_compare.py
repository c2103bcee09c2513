"""The experiment comparison table from `dvc exp show --json` records and each run's committed reports
(the real run, reading them from git, is in test_e2e)."""

from __future__ import annotations

from tunelab.track.compare import collect, markdown_table


REPORTS: dict[tuple[str, str], dict] = {}  # (commit, report name) -> report, as each commit holds it


def experiment_rev(method: str, prompt_loose: float, vs_base: dict, name: str = "", rev: str = "") -> dict:
    interval = {"mean": prompt_loose, "ci_low": prompt_loose - 0.1, "ci_high": prompt_loose + 0.1, "n": 40}
    evaluate = {"variants": {"aligned": {"ifeval": {"prompt_level_loose": interval},
                                         "humaneval": {"pass@1": {"mean": None}}}},
                "comparisons": {"aligned_vs_base": {"ifeval.prompt_level_loose": vs_base}}}
    REPORTS[rev, "evaluate"], REPORTS[rev, "sft"] = evaluate, {"eval_loss": 1.5}
    return {"rev": rev, "name": name, "data": {
        "rev": rev, "params": {"params.yaml": {"data": {"method": method, "sft": {"peft": "lora"}}}},
        "metrics": {"reports/headline.json": {"data": {"aligned": 100 * prompt_loose}}},
        "deps": {"data/curated": {"hash": "826bcf30abcdef"}}}}


def test_rows_carry_intervals_and_paired_verdicts():
    significant = {"diff": 0.2, "p_value": 0.01, "significant": True}
    not_significant = {"diff": -0.025, "p_value": 1.0, "significant": False}
    running = {"executor": {"state": "running"}, "revs": [{"rev": "5e1f00d", "name": "m-kto", "data": {}}]}
    failed = {"revs": [{"rev": "0dd1e55", "name": "m-simpo", "error": {"type": "ReproductionError"}}]}
    REPORTS["5e1f00d", "evaluate"] = REPORTS["0dd1e55", "evaluate"] = {"variants": {}}  # neither may be read
    shown = [{"rev": "workspace"},
             {**experiment_rev("dpo", 0.175, not_significant, rev="dc2ef88aaaa"),
              "experiments": [{"revs": [experiment_rev("orpo", 0.4, significant, name="m-orpo", rev="a1b2c3d")]},
                              running, failed]}]
    rows = collect(shown, report_at=lambda rev, name: REPORTS.get((rev, name)))
    assert [(r["experiment"], r["method"], r["commit"], r["data"]) for r in rows] == [
        ("default", "dpo", "dc2ef88", "826bcf30"), ("m-orpo", "orpo", "dc2ef88", "826bcf30")]
    table = markdown_table(rows).splitlines()
    assert table[2].startswith("| default | dc2ef88 | dpo | lora | 826bcf30 | 1.500 | 17.5 [7.5, 27.5] | - | - |")
    assert table[2].endswith("| -2.5 (p=1.00) | - | - |")  # a missing comparison is '-', not a 0
    assert table[3].endswith("| **+20.0 (p=0.01)** | - | - |")  # significant: bold
