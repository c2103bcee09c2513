"""Supervised fine-tuning with TRL's SFTTrainer and a LoRA adapter.

Rows arrive as conversations (`{"messages": [...]}`); they are turned into TRL's conversational
prompt-completion form so the loss falls on the assistant turn only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import as_dict
from tunelab.models import directory_size_mb, load_tokenizer, load_variant
from tunelab.training import (
    LoraSettings, Optimisation, Stopwatch, peak_memory_mb, step_history, trainable_parameters,
    trainer_arguments,
)

log = logging.getLogger("tunelab")


@dataclass
class SFTSettings:
    peft: str = "lora"  # only LoRA in this version; the other methods come with the training issue
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: Optimisation = field(default_factory=lambda: Optimisation(learning_rate=2e-4))

    def __post_init__(self) -> None:
        from tunelab.config import ConfigError

        if self.peft != "lora":
            raise ConfigError(f"sft.peft: '{self.peft}' is not allowed (allowed: lora)")


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
    work_dir: Path,
) -> dict[str, Any]:
    """Train a LoRA adapter, save it to `out_dir`, and return the sft report."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(base_dir, padding_side="right")
    model = load_variant(base_dir)
    args = SFTConfig(
        **trainer_arguments(settings.optim, str(work_dir)),
        completion_only_loss=True,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(to_prompt_completion(train_rows)),
        eval_dataset=Dataset.from_list(to_prompt_completion(val_rows)) if val_rows else None,
        processing_class=tokenizer,
        peft_config=settings.lora.peft_config(),
    )
    # TRL drops rows whose completion is truncated away entirely (prompt >= max_length): say so.
    train_used = len(trainer.train_dataset)
    val_used = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    if train_used == 0:
        raise ValueError(f"every training row's prompt is longer than sft.optim.max_length={settings.optim.max_length} "
                         "tokens; raise it")
    if train_used < len(train_rows) or val_used < len(val_rows):
        log.warning("%d train and %d validation rows do not fit sft.optim.max_length=%d and are not trained on",
                    len(train_rows) - train_used, len(val_rows) - val_used, settings.optim.max_length)
    trainable, total = trainable_parameters(trainer.model)
    with Stopwatch() as clock:
        result = trainer.train()
    eval_loss = trainer.evaluate()["eval_loss"] if val_used else None
    trainer.model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "tunelab_config.json").write_text(json.dumps(as_dict(settings), indent=2) + "\n")
    tokens = trainer.state.num_input_tokens_seen
    return {
        "method": settings.peft,
        "train_loss": result.training_loss,
        "eval_loss": eval_loss,
        "runtime_s": clock.seconds,
        "steps": trainer.state.global_step,
        "train_rows": len(train_rows),
        "val_rows": len(val_rows),
        "train_rows_used": train_used,  # rows with some completion left within max_length
        "val_rows_used": val_used,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100.0 * trainable / total,
        "tokens_seen": tokens,
        "tokens_per_s": tokens / clock.seconds if clock.seconds else 0.0,
        "peak_memory_mb": peak_memory_mb(),
        "artifact_mb": directory_size_mb(out_dir),
        "history": step_history(trainer.state.log_history),
    }
