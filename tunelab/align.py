"""Preference alignment from the SFT model with TRL: DPO, ORPO, KTO.

All methods share one skeleton: the SFT adapter is merged into the base weights, a fresh LoRA
adapter is trained on top, and (for methods with a reference model) TRL uses the same weights
with the adapter disabled as the reference, so no second copy of the model is held.
The methods differ only in their config section and trainer class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import ConfigError, as_dict
from tunelab.models import directory_size_mb, load_tokenizer, load_variant
from tunelab.training import (
    LoraSettings, Optimisation, Stopwatch, peak_memory_mb, step_history, trainable_parameters,
    trainer_arguments,
)

METHODS = ("dpo", "orpo", "kto")


@dataclass
class DPOSettings:
    beta: float = 0.1  # DPO paper / TRL default; seed #4 used 0.1


@dataclass
class ORPOSettings:
    beta: float = 0.1  # ORPO paper's lambda (TRL calls it beta), TRL default 0.1


@dataclass
class KTOSettings:
    beta: float = 0.1  # KTO paper / TRL default
    desirable_weight: float = 1.0  # paper: keep desirable:undesirable weight ratio in [1, 4/3]
    undesirable_weight: float = 1.0


@dataclass
class AlignSettings:
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: Optimisation = field(default_factory=lambda: Optimisation(learning_rate=5e-5))
    dpo: DPOSettings = field(default_factory=DPOSettings)
    orpo: ORPOSettings = field(default_factory=ORPOSettings)
    kto: KTOSettings = field(default_factory=KTOSettings)


def check_method(method: Any) -> str:
    if method not in METHODS:
        raise ConfigError(f"method: '{method}' is not allowed (allowed: {', '.join(METHODS)})")
    return method


def to_unpaired(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KTO rows: each pair gives one desirable and one undesirable completion."""
    rows = []
    for pair in pairs:
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return rows


def _trainer_for(method: str, settings: AlignSettings, work_dir: Path) -> tuple[type, Any]:
    """The TRL trainer class and its config for `method`; the only per-method code."""
    common = trainer_arguments(settings.optim, str(work_dir))
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig(**common, beta=settings.dpo.beta)
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig(**common, beta=settings.orpo.beta)
    from trl import KTOConfig, KTOTrainer

    return KTOTrainer, KTOConfig(
        **common, beta=settings.kto.beta, desirable_weight=settings.kto.desirable_weight,
        undesirable_weight=settings.kto.undesirable_weight,
    )


def train_alignment(
    method: str, base_dir: Path, sft_adapter: Path, pairs: list[dict[str, Any]], settings: AlignSettings,
    out_dir: Path, work_dir: Path,
) -> dict[str, Any]:
    from datasets import Dataset

    check_method(method)
    rows = to_unpaired(pairs) if method == "kto" else [
        {"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs
    ]
    tokenizer = load_tokenizer(base_dir, padding_side="right")
    model = load_variant(base_dir, [sft_adapter])
    trainer_class, args = _trainer_for(method, settings, work_dir)
    trainer = trainer_class(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=settings.lora.peft_config(),
    )
    trainable, total = trainable_parameters(trainer.model)
    with Stopwatch() as clock:
        result = trainer.train()
    trainer.model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    resolved = {"method": method, **as_dict(settings)}
    (out_dir / "tunelab_config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    history = step_history(trainer.state.log_history)
    last = history[-1] if history else {}
    return {
        "method": method,
        "train_loss": result.training_loss,
        "runtime_s": clock.seconds,
        "steps": trainer.state.global_step,
        "pairs": len(pairs),
        "train_rows": len(rows),
        "trainable_params": trainable,
        "total_params": total,
        "peak_memory_mb": peak_memory_mb(),
        "artifact_mb": directory_size_mb(out_dir),
        "final": {k: v for k, v in last.items() if k.startswith("rewards/") or k.startswith("logps/")},
        "history": history,
    }
