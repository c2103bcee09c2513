"""A bad param stops `dvc repro` and `dvc exp run` before DVC deletes any output.

DVC deletes a stage's outputs just before it runs the stage, and a stage checks its params only once
it runs; so the check must run as a stage of its own, upstream of every other. These tests put a
file in place of every stage output, set a bad value and run real DVC: each output must still be
there, byte for byte, and the error must be the one line naming the key.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO
from tests.pipeline.workspace import project_copy, run, shrink


def stage_outputs(repo) -> list[str]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    found = []
    for name, stage in stages.items():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                found += list(entry) if isinstance(entry, dict) else [entry]
    return [path for path in found if path != "reports/params.json"]


@pytest.fixture(scope="module")
def finished_project(tmp_path_factory):
    """Laid out once per module (about 10 s of DVC and git); each test breaks its own copy."""
    repo = tmp_path_factory.mktemp("params-first") / "tunelab"
    env = project_copy(repo, shrink(yaml.safe_load((REPO / "params.yaml").read_text())))
    run(["dvc", "repro", "params"], repo, env)
    outputs = stage_outputs(repo)
    assert len(outputs) >= 20, outputs  # every stage's outputs, from dvc.yaml itself
    for path in outputs:  # stand-ins for a finished run's outputs
        target = repo / path
        if target.suffix:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"kept {path}\n")
        else:
            target.mkdir(parents=True, exist_ok=True)
            (target / "kept.txt").write_text(f"kept {path}\n")
    # Recorded as a finished run's outputs (dvc.lock and the cache), as after `make run`.
    run(["dvc", "commit", "--force"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "a finished run"], repo, env)
    return repo, env, outputs


@pytest.fixture
def project(finished_project, tmp_path):
    template, env, outputs = finished_project
    repo = tmp_path / "tunelab"
    shutil.copytree(template, repo, symlinks=True)
    return repo, env, outputs


def assert_all_kept(repo, outputs):
    for path in outputs:
        target = repo / path
        kept = target if target.suffix else target / "kept.txt"
        assert kept.is_file() and kept.read_text() == f"kept {path}\n", f"{path} was deleted or changed"


@pytest.mark.parametrize("command", [
    ["dvc", "exp", "run", "-S", "method=fooo"],
    ["dvc", "exp", "run", "-S", "align.optim.batch_size=many"],
    ["dvc", "repro"],
])
def test_a_bad_value_stops_the_run_before_any_output_is_touched(project, command):
    repo, env, outputs = project
    if command[1] == "repro":  # an edited params.yaml, as a user would make it
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["method"] = "fooo"
        (repo / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Running stage 'params'" in output
    assert "error: method: 'fooo' is not allowed" in output or "error: align.optim.batch_size: expected an integer" in output, output[-3000:]
    assert [stage for stage in ("base", "align", "report") if f"Running stage '{stage}'" in output] == []
    assert_all_kept(repo, outputs)


def test_a_bad_profile_is_named(project):
    repo, env, outputs = project
    profile = yaml.safe_load((repo / "profiles/full.yaml").read_text())
    profile.setdefault("sft", {})["peft"] = "lorra"
    (repo / "profiles/full.yaml").write_text(yaml.safe_dump(profile))
    result = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "error: profiles/full.yaml: sft.peft" in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
    assert_all_kept(repo, outputs)


def test_valid_params_pass_and_the_check_output_does_not_depend_on_values(tmp_path):
    repo = tmp_path / "tunelab"
    env = project_copy(repo, shrink(yaml.safe_load((REPO / "params.yaml").read_text())))
    run(["dvc", "repro", "params"], repo, env)
    first = (repo / "reports/params.json").read_text()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["method"] = "orpo"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    run(["dvc", "repro", "params"], repo, env)
    assert (repo / "reports/params.json").read_text() == first  # so a valid change re-runs only its readers
