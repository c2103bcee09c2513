"""The benchmark table's logic: targets, ratios, merging runs, the README block, and the SFT profile's grouping (no benchmark runs)."""

from __future__ import annotations

import json

import pytest

from bench.common import Figure, Target, markdown_table
from bench.run import main as bench_main
from bench.run import merged, update_readme

UNDER_40_PERCENT = Target("< 40% of the full run", on="ratio", op="<", threshold=0.40)


def test_a_ratio_just_over_its_threshold_is_not_met_and_does_not_print_as_met():
    switch = Figure("method switch", 715.4, "s", baseline=1767.9, target=UNDER_40_PERCENT)
    assert switch.ratio == pytest.approx(0.4047, abs=1e-4)
    assert switch.met is False
    row = markdown_table([switch]).splitlines()[-1]
    assert "| 0.405x |" in row and "| **no** |" in row


def test_value_targets_rates_and_missing_figures():
    faster = Target(">= 4x naive", on="ratio", op=">=", threshold=4.0)
    assert Figure("generation", 145.0, "tok/s", baseline=13.0, target=faster).met is True
    assert Figure("generation", 40.0, "tok/s", baseline=13.0, target=faster).met is False
    no_op = Figure("no-op repro", 2.9, "s", target=Target("< 5 s", on="value", op="<", threshold=5.0))
    assert no_op.met is True and no_op.ratio is None
    unmeasured = Figure("llama.cpp", None, "tok/s", baseline_name="llama.cpp", note="not installed",
                        target=faster)
    assert unmeasured.met is None
    assert "| n/a | n/a (llama.cpp) | — | >= 4x naive | — | not installed |" in markdown_table([unmeasured])


def test_a_figure_survives_its_json_round_trip():
    figure = Figure("sft mfu", 13.1, "%", baseline=2.1, baseline_name="TRL defaults",
                    target=Target(">= 40 % MFU", on="value", op=">=", threshold=40.0), samples=[13.0, 13.1, 13.2])
    again = Figure.from_dict(json.loads(json.dumps(figure.as_dict())))
    assert again == figure and again.met is False


def test_merge_keeps_only_the_families_not_run_again(tmp_path):
    out = tmp_path / "bench.json"
    old = [Figure("matmul", 140.0, "GFLOP/s", family="matmul"), Figure("sandbox", 30.0, "s", family="sandbox")]
    out.write_text(json.dumps({"runs": [{"families": ["matmul", "sandbox"], "id": "old"}],
                               "figures": [f.as_dict() for f in old]}))
    new = Figure("sandbox", 28.9, "s", family="sandbox")
    runs, figures = merged(out, {"families": ["sandbox"], "id": "new"}, [new])
    assert [(r["id"], r["families"]) for r in runs] == [("old", ["matmul"]), ("new", ["sandbox"])]
    assert [(f.name, f.value) for f in figures] == [("matmul", 140.0), ("sandbox", 28.9)]


def test_the_readme_block_is_replaced_and_a_readme_without_one_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold table\n<!-- bench:end -->\nafter\n")
    update_readme(readme, "new table")
    assert readme.read_text() == "intro\n<!-- bench:start -->\nnew table\n<!-- bench:end -->\nafter\n"
    bare = tmp_path / "BARE.md"
    bare.write_text("no markers\n")
    with pytest.raises(ValueError, match="no <!-- bench:start -->"):
        update_readme(bare, "table")


def test_render_rebuilds_the_table_from_the_figures_file(tmp_path, capsys):
    out = tmp_path / "bench.json"
    machine = {"cpu_model": "cpu", "usable_cores": 2, "memory_gib": 24, "torch": "2.13.0", "torch_threads": 2,
               "started_utc": "2026-11-22T00:00:00+00:00", "commit": "abc", "load_average_at_start": [0.1]}
    run = {"families": ["pipeline"], "machine": machine, "quick": False, "command": ["bench/run.py"],
           "load_average_at_end": [0.2]}
    switch = Figure("method switch", 715.4, "s", baseline=1767.9, baseline_name="full run", target=UNDER_40_PERCENT,
                    family="pipeline")
    out.write_text(json.dumps({"runs": [run], "figures": [switch.as_dict()]}))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench:start -->\n<!-- bench:end -->\n")
    assert bench_main(["--render", "--out", str(out), "--readme", str(readme)]) == 0
    assert "| method switch | 715 s | 1768 s (full run) | 0.405x |" in readme.read_text()
    assert "- pipeline: cpu, 2 cores" in readme.read_text()
    with pytest.raises(SystemExit, match="does not exist"):
        bench_main(["--render", "--out", str(tmp_path / "missing.json")])


def test_the_sft_profile_sums_operators_into_its_groups():
    """bench/profile_sft.py's grouping, on a real (tiny) torch profile: a matmul and a dropout mask."""
    import torch

    from bench.profile_sft import matches, operator_table

    assert matches("aten::_scaled_dot_product_flash_attention_for_cpu", ("aten::_scaled_dot_product*",))
    assert not matches("aten::mm_backward", ("aten::mm",))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        weights = torch.randn(256, 256)
        for _ in range(5):
            torch.mm(weights, weights)
            torch.empty(256, 256).bernoulli_(0.5)
    operators, groups, total = operator_table(profiler, top=3)
    by_label = {group["group"].split(" (")[0]: group for group in groups}
    assert by_label["matmuls"]["operators"] == ["aten::mm"] and by_label["matmuls"]["cpu_s"] > 0
    assert by_label["LoRA dropout masks"]["operators"] == ["aten::bernoulli_"]
    assert by_label["attention"]["cpu_s"] == 0 and by_label["attention"]["operators"] == []
    assert len(operators) == 3 and operators[0]["self_cpu_s"] >= operators[-1]["self_cpu_s"]
    self_groups = [group["cpu_s"] for group in groups if group["time"] == "self"]
    assert 0 < sum(self_groups) <= total + 0.0005 * len(self_groups)  # each group is rounded to 1 ms
