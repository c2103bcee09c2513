"""One DDP rank dying mid-training: the launch stops every rank with one error line, and the re-run resumes.

The sft stage runs as dvc.yaml runs it (`python -m stages.sft`, which re-runs itself under torchrun
with `sft.launch.processes: 2`, gloo on CPU) on the tiny model. A `sitecustomize` on the workers'
PYTHONPATH SIGKILLs rank 1 alone at the end of step 3, after checkpoint-2 was saved and marked
complete, while rank 0 goes on into step 4 and waits for it in the gradient all-reduce. That launch
must end (not hang in the collective) with exit status 1 and one `error:` line, leave no worker
alive and no output, and the same command then resumes at step 2 and trains steps 3-6 once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, write_params
from tunelab.core.io import read_json, write_jsonl

KILL_ONE_RANK = """
import os, signal
if "LOCAL_RANK" in os.environ and os.environ.get("TUNELAB_TEST_PIDS"):
    open(os.path.join(os.environ["TUNELAB_TEST_PIDS"], str(os.getpid())), "w").close()
if "LOCAL_RANK" in os.environ and os.environ.get("RANK") == os.environ.get("TUNELAB_TEST_KILL_RANK"):
    from transformers.trainer_callback import CallbackHandler

    step_end = CallbackHandler.on_step_end

    def die_at_step(self, args, state, control):
        if state.global_step == int(os.environ["TUNELAB_TEST_KILL_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return step_end(self, args, state, control)

    CallbackHandler.on_step_end = die_at_step
"""
ROWS = [{"messages": [{"role": "user", "content": f"Name a number near {n}."},
                      {"role": "assistant", "content": f"{n + 1} is near {n}."}]} for n in range(16)]


def alive(pid: int) -> bool:
    """A process that still runs (a zombie has exited; only its parent has not collected it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_a_rank_killed_mid_training_stops_the_launch_and_the_rerun_resumes(params_copy, tiny_model_dir, tmp_path):
    data = tmp_path / "curated"
    write_jsonl(data / "train.jsonl", ROWS[:14])
    write_jsonl(data / "val.jsonl", ROWS[14:])
    params_copy["sft"]["launch"]["processes"] = 2
    params_copy["sft"]["optim"].update(max_steps=6, checkpoint_every=2, batch_size=1, max_length=64)
    params = write_params(tmp_path / "params.yaml", params_copy)
    out, metrics, work = tmp_path / "models/sft", tmp_path / "reports/sft.json", tmp_path / "ckpt"
    command = [sys.executable, "-m", "stages.sft", "--params", str(params), "--model", str(tiny_model_dir),
               "--data", str(data), "--out", str(out), "--metrics", str(metrics),
               "--plots", str(tmp_path / "reports/sft.csv"), "--work-dir", str(work)]
    hook, pids = tmp_path / "hook", tmp_path / "pids"
    hook.mkdir()
    pids.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_ONE_RANK)

    killed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, timeout=300, env={
        **os.environ, "PYTHONPATH": f"{hook}:{REPO}", "TUNELAB_TEST_PIDS": str(pids),
        "TUNELAB_TEST_KILL_RANK": "1", "TUNELAB_TEST_KILL_STEP": "3"})

    assert killed.returncode == 1, killed.stderr[-3000:]
    assert killed.stderr.strip().splitlines()[-1].startswith("error: stages.sft failed in its 2-process launch"), \
        killed.stderr[-3000:]
    # Above it, torchrun's summary names rank 1's SIGKILL as the root cause (rank 0 it stopped itself, or
    # rank 0 failed in the all-reduce first: which one wins the race varies, so it is not asserted).
    root_cause = killed.stderr.split("Root Cause")[-1]
    assert re.search(r"rank\s*: 1 .*\n.*\(SIGKILL\)", root_cause), killed.stderr[-3000:]
    workers = [int(p.name) for p in pids.iterdir()]
    assert len(workers) == 2 and not [pid for pid in workers if alive(pid)]  # rank 0 was stopped too
    assert not out.exists() and not metrics.exists()
    complete = sorted(p.parent.name for p in work.glob("checkpoint-*/tunelab_complete.json"))
    assert complete == ["checkpoint-2"]

    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, timeout=300,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = read_json(metrics)
    assert report["world_size"] == 2 and report["distributed_backend"] == "gloo"
    assert report["resumed_from_step"] == 2 and report["steps_this_run"] == 4 and report["steps"] == 6
    assert [h["step"] for h in report["history"]] == list(range(1, 7))  # each step logged once
    assert (out / "adapter_model.safetensors").is_file() and not work.exists()
