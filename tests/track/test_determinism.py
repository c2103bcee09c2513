"""`python -m tunelab.track.determinism` tells measured noise from a changed result."""

import json
from pathlib import Path

import pytest

from tunelab.track.determinism import differences, main


def fake_run(root: Path, md5: str, loss: float, runtime: float) -> Path:
    (root / "reports/plots").mkdir(parents=True)
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  sft:\n    cmd: x\n    outs:\n"
        f"    - path: models/sft\n      md5: {md5}.dir\n    - path: reports/report.md\n      md5: {runtime}\n")
    (root / "reports/sft.json").write_text(json.dumps({"eval_loss": loss, "runtime_s": runtime, "tokens_per_s": 1 / runtime}))
    (root / "reports/plots/sft_steps.csv").write_text(f"step,loss,step_seconds\n1,{loss},{runtime}\n")
    (root / "reports/headline.json").write_text(json.dumps({"sft_eval_loss": loss, "train_minutes": runtime / 60}))
    return root


def test_measured_fields_are_left_out_and_results_are_not(tmp_path, capsys):
    first = fake_run(tmp_path / "a", "abc", 1.25, runtime=10.0)
    same = fake_run(tmp_path / "b", "abc", 1.25, runtime=12.5)
    assert differences(first, same) == ([], 1, 3)
    changed = fake_run(tmp_path / "c", "abd", 1.5, runtime=10.0)
    found, _, _ = differences(first, changed)
    assert found == ["models/sft: md5 abc.dir vs abd.dir", "reports/headline.json: contents differ",
                     "reports/plots/sft_steps.csv: contents differ", "reports/sft.json: contents differ"]
    with pytest.raises(SystemExit) as exit_status:
        main([str(first), str(changed)])
    assert exit_status.value.code == 1 and "4 differ" in capsys.readouterr().out
