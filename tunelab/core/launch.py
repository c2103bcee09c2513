"""Multi-process training: a stage asked for N processes re-runs itself under torchrun or accelerate.

`dvc repro` calls `python -m stages.sft ...` once. When `sft.launch.processes` (or align's) is above 1
and the process is not already one of a launcher's workers, the stage starts the same command under
`torch.distributed.run` (gloo on CPU, NCCL on GPUs), or under `accelerate launch` with one of the
configs in configs/accelerate/ (DDP, FSDP, DeepSpeed ZeRO-3), and waits for it. Only rank 0
writes outputs.

An FSDP config on a machine without CUDA GPUs is refused when the settings are read: accelerate
turns it into plain data parallel on CPUs without a word, so the run would not be the one the
config describes (tests/train/test_fsdp_cpu.py shows it). DeepSpeed ZeRO-3 does shard on CPUs
(gloo), and runs there (tests/pipeline/test_resume_ddp.py).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tunelab.core.config import ConfigError, check_range

log = logging.getLogger("tunelab")


@dataclass
class LaunchSettings:
    processes: int = 1  # >1 runs the stage data-parallel (DDP): gloo on CPU, NCCL on GPUs
    accelerate_config: str | None = None  # e.g. configs/accelerate/fsdp.yaml; null = plain torchrun DDP

    def __post_init__(self) -> None:
        check_range("processes", self.processes, 1)  # config.build names the section (sft.launch or align.launch)
        if self.accelerate_config is not None and not Path(self.accelerate_config).is_file():
            raise ConfigError(f"accelerate_config: {self.accelerate_config} does not exist")
        zero = (accelerate_config(self.accelerate_config).get("deepspeed_config") or {})
        if zero.get("zero_stage") == 3 and not zero.get("zero3_save_16bit_model"):
            # Without it each rank saves its own ZeRO shards where the stage expects one model.
            raise ConfigError(f"accelerate_config: {self.accelerate_config} runs DeepSpeed ZeRO-3 without "
                              "zero3_save_16bit_model: true, so no rank could save the whole model; set it "
                              "(configs/accelerate/deepspeed_zero3.yaml does)")
        sharding = SHARDED_ON_GPUS_ONLY.get(accelerate_distributed_type(self.accelerate_config))
        if sharding and self.processes > 1 and not cuda_available():
            raise ConfigError(
                f"accelerate_config: {self.accelerate_config} shards the model with {sharding}, which accelerate "
                "runs only on GPUs: on this machine it would train unsharded data parallel instead. Fix: set "
                "accelerate_config: null (torchrun DDP, gloo on CPU) or configs/accelerate/deepspeed_zero3.yaml "
                "(DeepSpeed shards on CPUs too) here, or run on a machine with CUDA GPUs")


# accelerate's distributed_type -> what it shards with, for the ones accelerate shards only on GPUs
SHARDED_ON_GPUS_ONLY = {"FSDP": "FSDP"}


def accelerate_config(config_path: str | None) -> dict:
    if config_path is None:
        return {}
    import yaml

    return yaml.safe_load(Path(config_path).read_text()) or {}


def accelerate_distributed_type(config_path: str | None) -> str | None:
    return accelerate_config(config_path).get("distributed_type")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def is_worker() -> bool:
    """True inside a process started by torchrun or accelerate launch."""
    return "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def launcher_command(settings: LaunchSettings, module: str, argv: list[str]) -> list[str]:
    if settings.accelerate_config:
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", settings.accelerate_config,
                "--num_processes", str(settings.processes), "-m", module, *argv]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(settings.processes), "-m", module, *argv]


def relaunch(settings: LaunchSettings, module: str, argv: list[str] | None) -> bool:
    """Run `module` under a launcher when more than one process is asked for; True if it did.

    A failure in any worker stops all of them; it is raised as one RuntimeError here.
    """
    if settings.processes == 1 or is_worker():
        return False
    command = launcher_command(settings, module, list(sys.argv[1:] if argv is None else argv))
    log.info("launching %d processes: %s", settings.processes, " ".join(command))
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(command, env=environment)
    if result.returncode != 0:
        raise RuntimeError(f"{module} failed in its {settings.processes}-process launch (exit {result.returncode}); "
                           "the workers' errors are above")
    return True
