"""Preference alignment from the SFT model with TRL: DPO, IPO, ORPO, KTO, SimPO, or none.

All methods share one skeleton: the SFT model is rebuilt (its LoRA merged into the base weights,
or the full SFT model loaded), a fresh LoRA adapter is trained on top, and for methods with a
reference model (DPO, IPO, KTO) TRL uses the same weights with the adapter disabled as the
reference, so no second copy of the model is held. ORPO and SimPO need no reference at all.
The methods differ only in their config section and trainer class. `none` trains nothing and
passes the SFT model through, so the evaluation compares base, sft and sft again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.core.config import as_dict
from tunelab.core.io import written_whole
from tunelab.core.launch import LaunchSettings, is_main_process
from tunelab.core.measuring import directory_size_mb
from tunelab.core.models import (
    PASSTHROUGH_FILE,
    artifact_kind,
    load_tokenizer,
    load_variant,
)
from tunelab.train.checkpoints import CheckpointDir, training_key
from tunelab.train.training import (
    TRAINING_CODE,
    LoraSettings,
    OptimSettings,
    save_trained,
    train_resumably,
    trainable_parameters,
    trainer_arguments,
)

PAIR = ("prompt", "chosen", "rejected")  # the fields of a preference row every method reads


@dataclass
class DPOSettings:
    beta: float = 0.1  # DPO paper / TRL default; seed #4 used 0.1


@dataclass
class IPOSettings:
    beta: float = 0.1  # IPO's tau (TRL: beta with loss_type='ipo'); TRL default, the IPO paper sweeps 0.01-1


@dataclass
class ORPOSettings:
    beta: float = 0.1  # ORPO paper's lambda (TRL calls it beta), TRL default 0.1


@dataclass
class KTOSettings:
    beta: float = 0.1  # KTO paper / TRL default
    desirable_weight: float = 1.0  # paper: keep desirable:undesirable weight ratio in [1, 4/3]
    undesirable_weight: float = 1.0


@dataclass
class SimPOSettings:
    beta: float = 2.0  # SimPO paper: beta 2.0-2.5 (its rewards are length-normalised, so beta is large)
    gamma: float = 1.0  # target reward margin; the paper's gamma/beta ratio of ~0.5


@dataclass
class AlignSettings:
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(learning_rate=5e-5))
    dpo: DPOSettings = field(default_factory=DPOSettings)
    orpo: ORPOSettings = field(default_factory=ORPOSettings)
    kto: KTOSettings = field(default_factory=KTOSettings)
    ipo: IPOSettings = field(default_factory=IPOSettings)
    simpo: SimPOSettings = field(default_factory=SimPOSettings)
    launch: LaunchSettings = field(default_factory=LaunchSettings)


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
    if method in ("dpo", "ipo"):
        from trl import DPOConfig, DPOTrainer

        if method == "ipo":
            return DPOTrainer, DPOConfig(**common, beta=settings.ipo.beta, loss_type=["ipo"])
        return DPOTrainer, DPOConfig(**common, beta=settings.dpo.beta)
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig(**common, beta=settings.orpo.beta)
    if method == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        # SimPO is CPO's trainer with the SimPO loss and no behaviour-cloning term (cpo_alpha=0).
        return CPOTrainer, CPOConfig(
            **common, loss_type="simpo", cpo_alpha=0.0, beta=settings.simpo.beta, simpo_gamma=settings.simpo.gamma,
        )
    from trl import KTOConfig, KTOTrainer

    return KTOTrainer, KTOConfig(
        **common, beta=settings.kto.beta, desirable_weight=settings.kto.desirable_weight,
        undesirable_weight=settings.kto.undesirable_weight,
    )


def check_alignable(method: str, sft_dir: Path) -> None:
    if method != "none" and artifact_kind(sft_dir) == "prompt":
        raise ValueError(
            f"{sft_dir} is a prompt-tuning adapter, which cannot be merged into weights, and TRL's preference "
            "trainers do not handle virtual tokens; align a LoRA, QLoRA, DoRA or full SFT model, or set method: none"
        )


def pass_through(sft_dir: Path, out_dir: Path) -> dict[str, Any]:
    """method: none. The aligned model is the SFT model; the marker tells loaders to skip this stage."""
    with written_whole(out_dir) as partial:
        (partial / PASSTHROUGH_FILE).write_text(json.dumps({"method": "none", "passes_through": str(sft_dir)}) + "\n")
    return {"method": "none", "steps": 0, "runtime_s": 0.0, "train_loss": None, "history": []}


def train_alignment(
    method: str, base_dir: Path, sft_dir: Path, pairs: list[dict[str, Any]], settings: AlignSettings,
    out_dir: Path, work_dir: Path, callbacks: list[Any] | None = None,
) -> dict[str, Any] | None:
    """Train, save to `out_dir` once finished, and return the align report (None on non-main DDP ranks).
    `callbacks` are extra TrainerCallbacks (bench/training.py times steps with one)."""
    from datasets import Dataset

    check_alignable(method, sft_dir)
    if method == "none":
        return pass_through(sft_dir, out_dir) if is_main_process() else None
    rows = to_unpaired(pairs) if method == "kto" else [
        {"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs
    ]
    tokenizer = load_tokenizer(base_dir, padding_side="right")
    model = load_variant(base_dir, [sft_dir], attention=settings.optim.attention)
    checkpoints = CheckpointDir(work_dir, training_key({"method": method, **as_dict(settings)}, rows, [base_dir, sft_dir],
                                                  [*TRAINING_CODE, Path(__file__)]))
    trainer_class, args = _trainer_for(method, settings, checkpoints.root)
    trainer = trainer_class(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=settings.lora.peft_config(), callbacks=callbacks,
    )
    trainable, total = trainable_parameters(trainer.model)
    training = train_resumably(trainer, checkpoints)
    save_trained(trainer, tokenizer, {"method": method, **as_dict(settings)}, out_dir, checkpoints)
    if not is_main_process():
        return None
    last = training["history"][-1] if training["history"] else {}
    return {
        "method": method,
        **training,
        "pairs": len(pairs),
        "train_rows": len(rows),
        "trainable_params": trainable,
        "total_params": total,
        "artifact_mb": directory_size_mb(out_dir),
        "final": {k: v for k, v in last.items() if k.startswith("rewards/") or k.startswith("logps/")},
    }


def score_on_validation(base_dir: Path, sft_dir: Path, aligned_dir: Path, validation: dict[str, Any]) -> dict[str, Any]:
    """The aligned model's validation scores beside the SFT model's, with the paired win/loss count.

    The validation prompts come from the preference stage's held-back split: this is the number to
    choose align settings on (`dvc exp show`), never the held-out evaluation set.
    """
    from tunelab.core.generation import SamplingSettings
    from tunelab.train.preference import validation_answers, win_loss

    rows = validation["rows"]
    if not rows:
        return {"prompts": 0}
    if artifact_kind(aligned_dir) == "passthrough":
        aligned = validation
    else:
        model = load_variant(base_dir, [sft_dir, aligned_dir])
        aligned = validation_answers(model, load_tokenizer(base_dir), rows, SamplingSettings(**validation["sampling"]))
    return {
        "prompts": len(rows),
        "sft": validation["accuracy"],
        "aligned": aligned["accuracy"],
        "prompt_loose_gain": aligned["accuracy"]["prompt_level_loose"] - validation["accuracy"]["prompt_level_loose"],
        **win_loss("aligned", "sft", aligned["prompt_loose"], validation["prompt_loose"]),
    }
