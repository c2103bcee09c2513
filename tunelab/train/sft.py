"""Supervised fine-tuning with TRL's SFTTrainer: LoRA, QLoRA, DoRA, prompt tuning or full weights.

Rows arrive as conversations (`{"messages": [...]}`); they are turned into TRL's conversational
prompt-completion form so the loss falls on the assistant turn only. Every method shares one
skeleton; they differ in how the model is loaded (4-bit for QLoRA), which PEFT config wraps it
(none for full fine-tuning) and their learning rate.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.core.config import ConfigError, as_dict, check_range
from tunelab.core.launch import LaunchSettings, is_main_process
from tunelab.core.measuring import directory_size_mb
from tunelab.core.models import load_tokenizer, load_variant
from tunelab.train.checkpoints import CheckpointDir, training_key
from tunelab.train.training import (
    TRAINING_CODE,
    LoraSettings,
    OptimSettings,
    resolve_precision,
    save_trained,
    train_resumably,
    trainable_parameters,
    trainer_arguments,
)

log = logging.getLogger("tunelab")

SFT_METHODS = ("lora", "qlora", "dora", "prompt_tuning", "full")


@dataclass
class QLoRASettings:
    quant_type: str = "nf4"  # QLoRA paper: 4-bit NormalFloat
    double_quant: bool = True  # QLoRA paper: quantize the quantization constants too (~0.4 bit/param saved)

    def __post_init__(self) -> None:
        if self.quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"sft.qlora.quant_type: '{self.quant_type}' is not allowed (allowed: nf4, fp4)")


@dataclass
class PromptTuningSettings:
    num_virtual_tokens: int = 20  # seed #2 compared LoRA with 20 virtual tokens
    init_text: str | None = "Answer the user's request helpfully and follow every instruction it gives."
    learning_rate: float = 3.0e-2  # prompt tuning trains ~10^4 parameters: it needs a far larger rate than LoRA

    def __post_init__(self) -> None:
        check_range("sft.prompt_tuning.num_virtual_tokens", self.num_virtual_tokens, 1)


@dataclass
class FullSettings:
    learning_rate: float = 2.0e-5  # full fine-tuning moves every weight: an order of magnitude below the LoRA rate


@dataclass
class SFTSettings:
    peft: str = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)  # lora, qlora and dora
    qlora: QLoRASettings = field(default_factory=QLoRASettings)
    prompt_tuning: PromptTuningSettings = field(default_factory=PromptTuningSettings)
    full: FullSettings = field(default_factory=FullSettings)
    packing: bool = False  # best-fit-decreasing packing into max_length blocks, padding-free
    group_by_length: bool = True  # batches of rows of similar length (LengthGroupedSampler): less padding
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(learning_rate=2e-4))
    launch: LaunchSettings = field(default_factory=LaunchSettings)

    def __post_init__(self) -> None:
        if self.peft not in SFT_METHODS:
            raise ConfigError(f"sft.peft: '{self.peft}' is not allowed (allowed: {', '.join(SFT_METHODS)})")
        if self.packing and self.peft == "prompt_tuning":
            # packed rows are told apart by position_ids, which PEFT's prompt tuning drops
            raise ConfigError("sft.packing: true does not work with sft.peft: prompt_tuning (set packing: false)")
        if self.packing and self.group_by_length:
            raise ConfigError("sft.packing and sft.group_by_length are both true: packed blocks all have max_length "
                              "tokens, so there is nothing to group (set one of them false)")

    def learning_rate(self) -> float:
        return {"prompt_tuning": self.prompt_tuning.learning_rate, "full": self.full.learning_rate}.get(
            self.peft, self.optim.learning_rate)


def load_model_and_peft(base_dir: Path, settings: SFTSettings) -> tuple[Any, Any]:
    """The model to train and the PEFT config that wraps it (None for full fine-tuning)."""
    attention = settings.optim.attention
    if settings.peft == "full":
        return load_variant(base_dir, attention=attention), None
    if settings.peft == "prompt_tuning":
        from peft import PromptTuningConfig, PromptTuningInit

        tuning = settings.prompt_tuning
        config = PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=tuning.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if tuning.init_text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=tuning.init_text, tokenizer_name_or_path=str(base_dir),
        )
        return load_variant(base_dir, attention=attention), config
    if settings.peft == "qlora":
        import torch
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if resolve_precision(settings.optim.precision) == "bf16" else torch.float32
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=settings.qlora.quant_type,
            bnb_4bit_use_double_quant=settings.qlora.double_quant, bnb_4bit_compute_dtype=compute,
        )
        return load_variant(base_dir, attention=attention, quantization_config=quantization), \
            settings.lora.peft_config()
    return load_variant(base_dir, attention=attention), settings.lora.peft_config(use_dora=settings.peft == "dora")


def to_prompt_completion(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Split each conversation before its last assistant turn: that turn is the completion."""
    out = []
    for number, row in enumerate(rows):
        messages = row.get("messages")
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError(f"row {number} has no final assistant turn: {str(row)[:120]}")
        out.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return out


def train_sft(
    base_dir: Path, train_rows: list[dict], val_rows: list[dict], settings: SFTSettings, out_dir: Path,
    work_dir: Path, callbacks: list[Any] | None = None,
) -> dict[str, Any] | None:
    """Train, save to `out_dir` once finished, and return the sft report (None on non-main DDP ranks).

    Checkpoints go to `work_dir`; a killed run resumes there from its last complete checkpoint.
    `callbacks` are extra TrainerCallbacks (bench/training.py times steps with one).
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(base_dir, padding_side="right")
    model, peft_config = load_model_and_peft(base_dir, settings)
    optim = dataclasses.replace(settings.optim, learning_rate=settings.learning_rate())
    checkpoints = CheckpointDir(work_dir, training_key(as_dict(settings), train_rows + val_rows, [base_dir], [*TRAINING_CODE, Path(__file__)]))
    args = SFTConfig(
        **trainer_arguments(optim, str(checkpoints.root)),
        completion_only_loss=True,
        packing=settings.packing,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        include_num_input_tokens_seen="non_padding",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(to_prompt_completion(train_rows)),
        eval_dataset=Dataset.from_list(to_prompt_completion(val_rows)) if val_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    # TRL drops rows whose completion is truncated away entirely (prompt >= max_length): say so.
    # With packing the datasets hold packed blocks, so the counts are of blocks.
    train_used = len(trainer.train_dataset)
    val_used = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    if train_used == 0:
        raise ValueError(f"every training row's prompt is longer than sft.optim.max_length={settings.optim.max_length} "
                         "tokens; raise it")
    if not settings.packing and (train_used < len(train_rows) or val_used < len(val_rows)):
        log.warning("%d train and %d validation rows do not fit sft.optim.max_length=%d and are not trained on",
                    len(train_rows) - train_used, len(val_rows) - val_used, settings.optim.max_length)
    trainable, total = trainable_parameters(trainer.model)
    training = train_resumably(trainer, checkpoints)
    eval_loss = trainer.evaluate()["eval_loss"] if val_used else None
    save_trained(trainer, tokenizer, as_dict(settings), out_dir, checkpoints)
    if not is_main_process():
        return None
    return {
        "method": settings.peft,
        **training,
        "eval_loss": eval_loss,
        "learning_rate": optim.learning_rate,
        "train_rows": len(train_rows),
        "val_rows": len(val_rows),
        "train_rows_used": train_used,  # rows (blocks when packing) with some completion within max_length
        "val_rows_used": val_used,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / total,
        "artifact_mb": directory_size_mb(out_dir),
    }
