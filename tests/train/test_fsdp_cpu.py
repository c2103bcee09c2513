"""The FSDP accelerate config a user would take to a GPU cluster, run here first.

The sft stage's workers under `accelerate launch --config_file configs/accelerate/fsdp.yaml` with 2
CPU processes (gloo) on the tiny model train end to end, but not sharded: accelerate turns a
config's FSDP on only for GPU-like devices, and on CPUs runs it as plain data parallel (MULTI_CPU,
ordinary Parameters), saying nothing. So the stage refuses FSDP without CUDA GPUs, with one line
and nothing written. The first test keeps the evidence: the day accelerate shards on CPU it fails,
and the refusal can go. (DeepSpeed ZeRO-3 does shard on CPUs: tests/pipeline/test_resume_ddp.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, write_params
from tests.train.test_ddp_rank_dies import ROWS
from tunelab.core.io import read_json, write_jsonl

# Each rank writes what it really trained under: accelerate's distributed type, and the class of the
# model's parameters (FSDP2 shards each one as a DTensor).
RECORD_SHARDING = """
import os
if "LOCAL_RANK" in os.environ and os.environ.get("TUNELAB_TEST_RECORD"):
    import transformers

    train = transformers.Trainer.train

    def recorded(self, *args, **kwargs):
        result = train(self, *args, **kwargs)
        kind = type(next(self.model_wrapped.parameters())).__name__
        path = os.path.join(os.environ["TUNELAB_TEST_RECORD"], os.environ["RANK"])
        open(path, "w").write(f"{self.accelerator.state.distributed_type} {kind}")
        return result

    transformers.Trainer.train = recorded
"""


def sft_command(params_copy: dict, model: Path, tmp_path: Path, launch: dict) -> tuple[list[str], Path, Path]:
    data = tmp_path / "curated"
    write_jsonl(data / "train.jsonl", ROWS[:14])
    write_jsonl(data / "val.jsonl", ROWS[14:])
    params_copy["sft"]["peft"] = "full"
    params_copy["sft"]["launch"].update(launch)
    params_copy["sft"]["optim"].update(max_steps=4, checkpoint_every=2, batch_size=1, max_length=64)
    params = write_params(tmp_path / "params.yaml", params_copy)
    out, metrics = tmp_path / "models/sft", tmp_path / "reports/sft.json"
    return [sys.executable, "-m", "stages.sft", "--params", str(params), "--model", str(model),
            "--data", str(data), "--out", str(out), "--metrics", str(metrics),
            "--plots", str(tmp_path / "reports/sft.csv"), "--work-dir", str(tmp_path / "work")], out, metrics


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU behaviour the refusal rests on")
def test_accelerate_runs_the_fsdp_config_unsharded_on_cpu(params_copy, tiny_model_dir, tmp_path):
    """The stage's workers, launched as the stage would launch them, with processes left at 1 so the
    stage's own refusal does not stop them."""
    stage, out, metrics = sft_command(params_copy, tiny_model_dir, tmp_path, {"processes": 1})
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs/accelerate/fsdp.yaml"), "--num_processes", "2", *stage[1:]]
    hook, record = tmp_path / "hook", tmp_path / "record"
    hook.mkdir()
    record.mkdir()
    (hook / "sitecustomize.py").write_text(RECORD_SHARDING)
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, timeout=600,
                         env={**os.environ, "PYTHONPATH": f"{hook}:{REPO}", "TUNELAB_TEST_RECORD": str(record)})
    assert run.returncode == 0, run.stderr[-4000:]
    # Were it sharded, each rank would say "DistributedType.FSDP DTensor".
    assert {p.name: p.read_text() for p in record.iterdir()} == {r: "DistributedType.MULTI_CPU Parameter" for r in "01"}
    report = read_json(metrics)
    assert report["world_size"] == 2 and report["distributed_backend"] == "gloo" and report["steps"] == 4
    assert (out / "model.safetensors").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only without CUDA GPUs")
def test_the_stage_refuses_fsdp_without_gpus(params_copy, tiny_model_dir, tmp_path):
    command, out, metrics = sft_command(params_copy, tiny_model_dir, tmp_path, {
        "processes": 2, "accelerate_config": str(REPO / "configs/accelerate/fsdp.yaml")})
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, timeout=300)
    assert run.returncode == 1, run.stderr[-4000:]
    last = run.stderr.strip().splitlines()[-1]
    assert "shards the model with FSDP" in last and "Fix: set accelerate_config: null" in last, last
    assert not out.exists() and not metrics.exists() and not (tmp_path / "work").exists()
