"""What SFT and every alignment method share: LoRA settings, trainer arguments, measurements.

DPO, ORPO and KTO differ only in their config and trainer class (see align.py), so everything
else lives here once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunelab.core.config import ConfigError, check_range
from tunelab.core.io import written_whole
from tunelab.core.measuring import Stopwatch, peak_memory_mb
from tunelab.core.models import save_tokenizer
from tunelab.train.checkpoints import CheckpointDir, MarkCompleteCheckpoints

# The code every method's training depends on; each method's run adds its own module to it
# (`checkpoints.training_key`), so a resumed run never continues one made by other code.
TRAINING_CODE = (Path(__file__),)


@dataclass
class LoraSettings:
    r: int = 8  # seed #4: r=8, alpha=16 (its dropout 0.05 costs CPU time; docs/performance.md)
    alpha: int = 16  # usually alpha = 2 * r
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )  # all attention + MLP projections, as in seed #4

    def __post_init__(self) -> None:
        check_range("r", self.r, 1)  # config.build names the section (sft.lora or align.lora)
        check_range("dropout", self.dropout, 0.0, 1.0)
        if not self.target_modules:
            raise ConfigError("target_modules must name at least one module")

    def peft_config(self, use_dora: bool = False) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
            target_modules=list(self.target_modules), task_type="CAUSAL_LM", use_dora=use_dora,
        )


@dataclass
class OptimSettings:
    max_steps: int = 30
    learning_rate: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    max_length: int = 512  # tokens per training sequence; longer rows are truncated
    logging_steps: int = 1
    precision: str = "auto"  # auto = bf16 on a CUDA GPU that has it, fp32 otherwise (CPU bf16 is slow)
    gradient_checkpointing: bool = False  # trades speed for activation memory; on for big models
    attention: str = "auto"  # auto = flash_attention_2 when installed on a GPU, else sdpa; or eager | sdpa
    checkpoint_every: int = 4  # steps between resumable checkpoints in the stage's work dir; 0 = none
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("max_steps", self.max_steps, 1)
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision: '{self.precision}' is not allowed (allowed: auto, fp32, bf16, fp16)")
        check_range("batch_size", self.batch_size, 1)
        check_range("checkpoint_every", self.checkpoint_every, 0)
        if self.attention not in ("auto", "eager", "sdpa", "flash_attention_2"):
            raise ConfigError(f"attention: '{self.attention}' is not allowed "
                              "(allowed: auto, eager, sdpa, flash_attention_2)")
        check_range("learning_rate", self.learning_rate, 0.0, 1.0)
        check_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        allowed = ("linear", "cosine", "constant", "constant_with_warmup")
        if self.scheduler not in allowed:
            raise ConfigError(f"scheduler: '{self.scheduler}' is not allowed (allowed: {', '.join(allowed)})")


def resolve_precision(precision: str) -> str:
    import torch

    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def trainer_arguments(opt: OptimSettings, output_dir: str) -> dict[str, Any]:
    """Keyword arguments every TRL config (SFTConfig, DPOConfig, ...) accepts.

    TRL defaults to bf16 and gradient checkpointing even on CPU, where bf16 autocast is many times
    slower than fp32 on chips without bf16 matrix units; both are set explicitly here.
    """
    precision = resolve_precision(opt.precision)
    return dict(
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=opt.gradient_checkpointing,
        output_dir=output_dir,
        max_steps=opt.max_steps,
        per_device_train_batch_size=opt.batch_size,
        per_device_eval_batch_size=opt.batch_size,
        gradient_accumulation_steps=opt.grad_accum,
        learning_rate=opt.learning_rate,
        lr_scheduler_type=opt.scheduler,
        warmup_steps=opt.warmup_ratio,  # a float below 1 is a ratio of max_steps in transformers 5
        logging_steps=opt.logging_steps,
        # Checkpoints go to the persisted work dir; see checkpoints.py for why the trainer's own
        # rotation (save_total_limit) stays off.
        save_strategy="steps" if opt.checkpoint_every else "no",
        save_steps=opt.checkpoint_every or 500,
        save_total_limit=None,
        eval_strategy="no",
        report_to="none",  # the report stage owns MLflow; trainers only write reports/*.json
        seed=opt.seed,
        data_seed=opt.seed,
        dataloader_num_workers=0,
        use_cpu=not _cuda_available(),
        max_length=opt.max_length,
        disable_tqdm=False,
    )


def train_resumably(trainer: Any, checkpoints: CheckpointDir) -> dict[str, Any]:
    """Train from the newest complete checkpoint (if any) and report what this process trained."""
    from tunelab.core.launch import is_main_process

    trainer.add_callback(MarkCompleteCheckpoints(checkpoints))
    trainer.add_callback(StopWhenNonFinite())
    start = _TrainingStart()
    trainer.add_callback(start)
    resume_from = checkpoints.prepare(main_process=is_main_process())
    with Stopwatch() as clock:
        result = trainer.train(resume_from_checkpoint=resume_from)
    steps_this_run = trainer.state.global_step - start.step
    tokens_this_run = trainer.state.num_input_tokens_seen - start.tokens
    return {
        "train_loss": result.training_loss,
        "runtime_s": clock.seconds,
        "steps": trainer.state.global_step,
        "resumed_from_step": start.step if resume_from else None,
        "steps_this_run": steps_this_run,
        "world_size": trainer.args.world_size,
        "distributed_backend": _distributed_backend(),
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "tokens_per_s": tokens_this_run / clock.seconds if clock.seconds else 0.0,
        "peak_memory_mb": peak_memory_mb(),
        "history": step_history(trainer.state.log_history),
    }


def save_trained(trainer: Any, tokenizer: Any, resolved: dict[str, Any], out_dir: Path,
                 checkpoints: CheckpointDir) -> None:
    """Write the trained model, its tokenizer and resolved config to `out_dir` in one rename; the
    checkpoints have then served their purpose. Every rank calls it: a model sharded across ranks
    (DeepSpeed ZeRO-3) is gathered by all of them, and only the main process writes."""
    from tunelab.core.launch import is_main_process

    if not is_main_process():
        trainer.save_model(str(checkpoints.root))  # its part of the gather; it writes nothing (should_save is False)
        return
    with written_whole(out_dir) as partial:
        trainer.save_model(str(partial))
        sort_target_modules(partial)
        save_tokenizer(tokenizer, partial)
        (partial / "tunelab_config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    checkpoints.finish()
    # The other ranks leave once the model is saved. transformers partitions every model loaded while
    # the trainer's ZeRO-3 config is registered, and a model this process loads from here on (the
    # align stage's validation answers) must load whole, not wait on ranks that have gone.
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def sort_target_modules(adapter_dir: Path) -> None:
    """PEFT keeps target_modules as a set and saves it in the per-process string-hash order, so two
    identical runs would write different adapter_config.json bytes (and DVC hashes); sort it."""
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


class StopWhenNonFinite(TrainerCallback):
    """Stop at the first logged step whose loss or gradient norm is not finite. The optimiser has
    already applied that step, so every later step (and, for online methods, every sample drawn
    from the policy) would be computed from NaN weights; nothing is saved, and the last complete
    checkpoint stays for a re-run with changed settings."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
                fix = "lower the learning rate" + (", or train in fp32 (optim.precision: fp32)" * (precision != "fp32"))
                # The loss alone is not enough: the trainer logs a NaN loss as the window's mean of the
                # finite ones (logging_nan_inf_filter), so the gradient norm is the first sign.
                raise RuntimeError(f"training diverged at step {state.global_step}: {key} is {value} "
                                   f"({precision}, learning rate {args.learning_rate:g}); {fix}")


class _TrainingStart(TrainerCallback):
    """Where training began: step and tokens restored from a checkpoint, 0 when fresh."""

    step = 0
    tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step = state.global_step
        self.tokens = state.num_input_tokens_seen


def _distributed_backend() -> str | None:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total); PEFT's own count unpacks 4-bit weights, which hold two values per byte."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def step_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-step training records (loss, learning rate, and method-specific metrics)."""
    return [
        {k: v for k, v in entry.items() if isinstance(v, (int, float))}
        for entry in log_history
        if "loss" in entry and "step" in entry
    ]
