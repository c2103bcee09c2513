"""Training survives SIGKILL, and runs over 2 CPU processes (gloo) on a tiny model: torchrun DDP,
DeepSpeed ZeRO-3 (sharded) and FSDP's config (which accelerate runs unsharded on CPUs).

The kill is real: a wrapper around the stage adds a callback that SIGKILLs its own process right
after step k, so the checkpoint at step k-1 is the last complete one. The re-run must resume there,
train each remaining step once, and log the same losses and learning rates as a run never killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO, write_params
from tests.pipeline.test_stages import base, curated, generated, preference, sft, work  # noqa: F401  (fixture chain)
from tests.train.test_fsdp_cpu import RECORD_SHARDING
from tunelab.core.io import read_json

KILL_AFTER_STEP = """
import os, signal, sys
from transformers import TrainerCallback
import tunelab.train.{module} as trained

class KillAfterStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == {step}:
            os.kill(os.getpid(), signal.SIGKILL)

original = trained.train_resumably
def train_then_die(trainer, checkpoints):
    trainer.add_callback(KillAfterStep())
    return original(trainer, checkpoints)
trained.train_resumably = train_then_die

from stages import {module} as stage
stage.main(sys.argv[1:])
"""


def stage_command(name: str, params: Path, work: Path, inputs: list[str], tag: str) -> list[str]:
    return [
        "--params", str(params), *inputs, "--out", str(work / f"models/{name}-{tag}"),
        "--metrics", str(work / f"reports/{name}-{tag}.json"), "--plots", str(work / f"reports/plots/{name}-{tag}.csv"),
        "--work-dir", str(work / f"ckpt/{name}-{tag}"),
    ]


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, **kwargs)


@pytest.mark.parametrize("name", ["sft", "align", "grpo"])
def test_killed_training_resumes_from_the_last_complete_checkpoint(name, work, base, curated, sft, preference):
    params = yaml.safe_load((work / "params.yaml").read_text())
    if name == "grpo":  # online RL: the align stage sampling its own completions; the resumed run samples the same
        params["method"] = "grpo"
        params["align"]["grpo"].update(max_steps=8, prompts_per_step=2)
        # Instruction prompts only: each sandboxed code completion costs seconds, and resuming does not
        # depend on which reward scored a step (the 2-process test below runs the code reward).
        params["align"]["rl"].update(code_prompts=0)
        params["align"]["optim"].update(checkpoint_every=2)
        name = "align"
    else:
        params[name]["optim"].update(max_steps=8, checkpoint_every=2, batch_size=2)  # several epochs of the tiny data
    path = write_params(work / f"params-resume-{params['method']}-{name}.yaml", params)
    inputs = (["--model", str(base), "--data", str(curated)] if name == "sft"
              else ["--model", str(base), "--sft", str(sft), "--data", str(preference)])

    straight_tag, resumed_tag = f"{params['method']}-straight", f"{params['method']}-resumed"
    straight = run(["-m", f"stages.{name}", *stage_command(name, path, work, inputs, straight_tag)])
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = run(["-c", KILL_AFTER_STEP.format(module=name, step=5), *stage_command(name, path, work, inputs, resumed_tag)])
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoints = work / f"ckpt/{name}-{resumed_tag}"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-4"]
    assert not (work / f"models/{name}-{resumed_tag}").exists()  # no output before training finished
    half_written = checkpoints / "checkpoint-6"  # what a kill during a save leaves: files, no marker
    half_written.mkdir()
    (half_written / "adapter_model.safetensors").write_bytes(b"\0" * 100)

    resumed = run(["-m", f"stages.{name}", *stage_command(name, path, work, inputs, resumed_tag)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "removing incomplete checkpoint" in resumed.stderr

    expected = read_json(work / f"reports/{name}-{straight_tag}.json")
    report = read_json(work / f"reports/{name}-{resumed_tag}.json")
    assert report["resumed_from_step"] == 4 and report["steps_this_run"] == 4 and report["steps"] == 8
    assert [h["step"] for h in report["history"]] == list(range(1, 9))  # each step once
    for want, got in zip(expected["history"][4:], report["history"][4:]):
        assert got["learning_rate"] == pytest.approx(want["learning_rate"], rel=1e-9)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
    assert not checkpoints.exists()  # cleared once the output was written


def test_changed_params_do_not_resume_stale_checkpoints(work, base, curated):
    from tunelab.train.checkpoints import MARKER, CheckpointDir

    stale = CheckpointDir(work / "ckpt/stale", key="another-run")
    stale.prepare()
    (stale.root / "checkpoint-2").mkdir()
    (stale.root / "checkpoint-2" / MARKER).write_text("{}")
    fresh = CheckpointDir(work / "ckpt/stale", key="this-run")
    assert fresh.prepare(main_process=False) is None  # other ranks never pick a stale checkpoint
    assert fresh.prepare() is None and not (stale.root / "checkpoint-2").exists()


@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_two_process_ddp_on_cpu(method, work, base, curated, sft, preference):
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["method"] = method
    params["sft"]["launch"]["processes"] = 2
    params["align"]["launch"]["processes"] = 2
    params["align"]["grpo"]["prompts_per_step"] = 2  # x 2 processes: the tiny run's 4 prompts make one step
    path = write_params(work / f"params-ddp-{method}.yaml", params)

    stages = [("align", ["--model", str(base), "--sft", str(sft), "--data", str(preference)])]
    if method == "dpo":  # SFT once
        stages.insert(0, ("sft", ["--model", str(base), "--data", str(curated)]))
    for name, inputs in stages:
        tag = f"ddp-{method}"
        result = run(["-m", f"stages.{name}", *stage_command(name, path, work, inputs, tag)], timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        report = read_json(work / f"reports/{name}-{tag}.json")
        steps = params["align"]["grpo"]["max_steps"] if method == "grpo" else params[name]["optim"]["max_steps"]
        assert report["world_size"] == 2 and report["distributed_backend"] == "gloo" and report["steps"] == steps
        assert (work / f"models/{name}-{tag}/adapter_model.safetensors").is_file()


# Each rank records what it trained under after training: accelerate's distributed type, and the
# least and the largest share of a parameter it holds itself (ZeRO-3 keeps a shard of each parameter
# in ds_tensor; ds_numel is the whole parameter's size; tiny ones, under 64 values, are left out).
RECORD_ZERO3_SHARDS = """
import os
if "LOCAL_RANK" in os.environ and os.environ.get("TUNELAB_TEST_RECORD"):
    import transformers

    train = transformers.Trainer.train

    def recorded(self, *args, **kwargs):
        result = train(self, *args, **kwargs)
        shares = [p.ds_tensor.numel() / p.ds_numel for p in self.model_wrapped.parameters()
                  if getattr(p, "ds_numel", 0) >= 64]
        path = os.path.join(os.environ["TUNELAB_TEST_RECORD"], os.environ["RANK"])
        low, high = (min(shares), max(shares)) if shares else (0, 0)
        open(path, "w").write(f"{self.accelerator.state.distributed_type} {len(shares)} {low} {high}")
        return result

    transformers.Trainer.train = recorded
"""


def test_deepspeed_zero3_shards_sft_and_dpo_over_two_cpu_processes(work, base, curated, sft, preference, tmp_path):
    """configs/accelerate/deepspeed_zero3.yaml, as a user would take it to a GPU cluster, run here on
    gloo: each rank holds half of every parameter, and the model is gathered whole to be saved."""
    params = yaml.safe_load((work / "params.yaml").read_text())
    for name in ("sft", "align"):
        params[name]["launch"].update(processes=2, accelerate_config=str(REPO / "configs/accelerate/deepspeed_zero3.yaml"))
    assert params["align"]["lora"] == params["sft"]["lora"]
    reference = load_file(sft / "adapter_model.safetensors")
    path = write_params(work / "params-zero3.yaml", params)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(RECORD_ZERO3_SHARDS)
    for name, inputs in (("sft", ["--model", str(base), "--data", str(curated)]),
                         ("align", ["--model", str(base), "--sft", str(sft), "--data", str(preference)])):
        record = tmp_path / f"record-{name}"
        record.mkdir()
        result = run(["-m", f"stages.{name}", *stage_command(name, path, work, inputs, "zero3")], timeout=900,
                     env={**os.environ, "PYTHONPATH": f"{hook}:{REPO}", "TUNELAB_TEST_RECORD": str(record)})
        assert result.returncode == 0, result.stderr[-3000:]
        ranks = {p.name: p.read_text().split() for p in record.iterdir()}
        assert sorted(ranks) == ["0", "1"], ranks
        for kind, parameters, low, high in ranks.values():
            assert kind == "DistributedType.DEEPSPEED" and int(parameters) > 0
            assert 0.45 < float(low) <= float(high) < 0.55, (name, low, high)  # every parameter split in two
        report = read_json(work / f"reports/{name}-zero3.json")
        assert report["world_size"] == 2 and report["distributed_backend"] == "gloo"
        assert report["steps"] == params[name]["optim"]["max_steps"]
        # Gathered whole: the same tensors, shape for shape, as the single-process SFT adapter (align's
        # LoRA settings are sft's), where an ungathered ZeRO-3 save would write empty or half shards.
        saved = load_file(work / f"models/{name}-zero3/adapter_model.safetensors")
        assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in reference.items()}
        assert not (work / f"ckpt/{name}-zero3").exists()  # finished, and no rank wrote there after


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU behaviour the FSDP refusal rests on")
def test_fsdp_runs_dpo_unsharded_on_cpu(work, base, sft, preference, tmp_path):
    """The align stage's workers under configs/accelerate/fsdp.yaml on 2 CPU processes, launched as
    the stage would launch them (its own refusal bypassed): DPO trains end to end, as plain data
    parallel. tests/train/test_fsdp_cpu.py shows the same for SFT."""
    hook, record = tmp_path / "hook", tmp_path / "record"
    hook.mkdir()
    record.mkdir()
    (hook / "sitecustomize.py").write_text(RECORD_SHARDING)
    inputs = ["--model", str(base), "--sft", str(sft), "--data", str(preference)]
    command = ["-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/fsdp.yaml"),
               "--num_processes", "2", "-m", "stages.align",
               *stage_command("align", work / "params.yaml", work, inputs, "fsdp")]
    result = run(command, timeout=900, env={**os.environ, "PYTHONPATH": f"{hook}:{REPO}",
                                           "TUNELAB_TEST_RECORD": str(record)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name: p.read_text() for p in record.iterdir()} == {r: "DistributedType.MULTI_CPU Parameter" for r in "01"}
    report = read_json(work / "reports/align-fsdp.json")
    assert report["world_size"] == 2 and report["distributed_backend"] == "gloo"


def test_a_failing_worker_stops_the_launch_with_one_error(work, base):
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["sft"]["launch"]["processes"] = 2
    path = write_params(work / "params-ddp-bad.yaml", params)
    missing = work / "data/missing"
    result = run(["-m", "stages.sft", *stage_command("sft", path, work, ["--model", str(base), "--data", str(missing)],
                                                      "ddp-bad")], timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: stages.sft failed in its 2-process launch")
    assert not (work / "models/sft-ddp-bad").exists()
