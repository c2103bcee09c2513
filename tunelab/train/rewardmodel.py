"""Reward models: train one on preference pairs with TRL's RewardTrainer, and score answers with any.

A reward model here is any `AutoModelForSequenceClassification` with one output (num_labels = 1):
the reward stage's own (models/reward), or a hub model such as the OpenAssistant DeBERTa reward
model the Synthetic Instruction Tuner write-up scored its answers with (../shared/SEEDS.md). A
model with a chat template reads the conversation through it; one without (DeBERTa) reads the
prompt and the answer as a text pair, as those models were trained.

The reward stage trains a LoRA adapter (and the new scoring head) on the base model with the
Bradley-Terry loss on the preference stage's pairs, keeps `heldout_fraction` of the prompts out of
training, and reports on those held-out pairs whether it scores chosen above rejected (the stage
turns that into an accuracy with a bootstrap interval); with held-out code pairs, on them too. The adapter is merged, so
models/reward loads as a plain sequence classifier wherever a reward model is asked for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.core.config import ConfigError, as_dict, check_range
from tunelab.core.measuring import directory_size_mb
from tunelab.core.models import load_tokenizer, save_tokenizer
from tunelab.core.resumable import directory_digest
from tunelab.train.checkpoints import CheckpointDir, training_key
from tunelab.train.training import (
    TRAINING_CODE,
    LoraSettings,
    OptimSettings,
    trainable_parameters,
    train_resumably,
    trainer_arguments,
)

PAIR_FIELDS = ("prompt", "chosen", "rejected")  # a preference row as the reward stage reads it


@dataclass
class RewardModelSettings:
    """params `reward`: the reward stage."""

    enabled: bool = False  # false: the stage writes only its report (the CPU default trains no reward model)
    heldout_fraction: float = 0.2  # prompts whose pairs are kept out of training, for the held-out pair accuracy
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(
        max_steps=32, learning_rate=1e-4, batch_size=4, max_length=384, checkpoint_every=8))
    seed: int = 0  # which prompts are held out

    def __post_init__(self) -> None:
        check_range("reward.heldout_fraction", self.heldout_fraction, 0.0, 0.9)


def split_pairs_by_prompt(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): every pair of a held-out prompt is held out, so no prompt is in both."""
    prompts = sorted({prompt_text(pair) for pair in pairs})
    heldout = set(random.Random(seed).sample(prompts, round(len(prompts) * fraction)))
    return ([p for p in pairs if prompt_text(p) not in heldout], [p for p in pairs if prompt_text(p) in heldout])


def prompt_text(pair: dict) -> str:
    return "\n".join(turn["content"] for turn in pair["prompt"])


def answer_text(turns: list[dict]) -> str:
    return "\n".join(turn["content"] for turn in turns)


class RewardModel:
    """Scores (prompt, answer) pairs with a sequence classifier of one output; higher is better."""

    def __init__(self, name_or_dir: str, batch_size: int = 8, where: str = "reward model"):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        self.name = str(name_or_dir)
        try:
            config = AutoConfig.from_pretrained(self.name)
        except OSError as err:
            raise FileNotFoundError(f"{where}: cannot open '{self.name}' ({str(err).splitlines()[0]}); give a local "
                                    "model directory or a hub id on a machine with hub access") from None
        architectures = config.architectures or []
        if not any(name.endswith("ForSequenceClassification") for name in architectures):
            raise ConfigError(f"{where}: '{self.name}' is not a sequence classifier (architectures: "
                              f"{', '.join(architectures) or 'none'}); a reward model is an "
                              "AutoModelForSequenceClassification with one output, e.g. the reward stage's "
                              "models/reward (-S reward.enabled=true) or "
                              "OpenAssistant/reward-model-deberta-v3-large-v2")
        if config.num_labels != 1:
            raise ConfigError(f"{where}: '{self.name}' has {config.num_labels} outputs; a reward model has one "
                              "(num_labels = 1): a classifier of several labels does not score answers")
        self.tokenizer = AutoTokenizer.from_pretrained(self.name)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(self.name).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size
        # A local model is no DVC dependency of the stage that scores with it (models/reward comes after
        # the preference stage): its bytes' hash goes into the report instead, so a run says which it used.
        self.digest = directory_digest(self.name)[:16] if Path(self.name).is_dir() else None

    def _text(self, prompt: list[dict], answer: list[dict]) -> tuple[str, str | None]:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(prompt + answer, tokenize=False), None
        return prompt_text({"prompt": prompt}), answer_text(answer)

    def score(self, prompts: list[list[dict]], answers: list[list[dict]], max_length: int = 1024) -> list[float]:
        import torch

        texts = [self._text(prompt, answer) for prompt, answer in zip(prompts, answers)]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            firsts, seconds = [t[0] for t in batch], [t[1] for t in batch]
            encoded = self.tokenizer(firsts, seconds if seconds[0] is not None else None, padding=True,
                                     truncation=True, max_length=max_length, return_tensors="pt",
                                     add_special_tokens=seconds[0] is not None)
            with torch.inference_mode():
                scores += self.model(**encoded).logits[:, 0].float().tolist()
        return scores

    def pair_outcomes(self, pairs: list[dict]) -> dict[str, Any]:
        """Per pair, whether the model scores chosen above rejected (1.0 or 0.0), and the mean margin;
        the reward stage turns the outcomes into an accuracy with its bootstrap interval."""
        chosen = self.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
        rejected = self.score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
        return {"pairs": len(pairs), "chosen_above_rejected": [float(c > r) for c, r in zip(chosen, rejected)],
                "margin_mean": sum(c - r for c, r in zip(chosen, rejected)) / len(pairs) if pairs else None}

    def close(self) -> None:
        import gc

        del self.model
        gc.collect()


def code_pair_rows(heldout: list[dict]) -> list[dict]:
    """The preference stage's held-out code pairs (code_heldout.jsonl) as preference rows: efficient over slow."""
    return [{"prompt": [{"role": "user", "content": row["prompt"]}],
             "chosen": [{"role": "assistant", "content": row["efficient"]}],
             "rejected": [{"role": "assistant", "content": row["slow"]}]} for row in heldout]


def reward_model_rows(pairs: list[dict]) -> list[dict]:
    """What RewardTrainer reads: the conversational prompt, chosen and rejected, nothing else (a
    `margin` column would change its loss)."""
    return [{field_name: p[field_name] for field_name in PAIR_FIELDS} for p in pairs]


def train_reward_model(base_dir: Path, pairs: list[dict], settings: RewardModelSettings, out_dir: Path, work_dir: Path,
                       heldout_code_pairs: list[dict] | None = None) -> dict[str, Any]:
    """Train on the pairs of most prompts, save the merged model to `out_dir`, report held-out accuracy."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from tunelab.core.io import written_whole

    train, heldout = split_pairs_by_prompt(pairs, settings.heldout_fraction, settings.seed)
    if not train:
        raise ValueError(f"reward: none of the {len(pairs)} pairs is left to train on; lower reward.heldout_fraction")
    rows = reward_model_rows(train)
    tokenizer = load_tokenizer(base_dir, padding_side="right")
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    checkpoints = CheckpointDir(work_dir, training_key(as_dict(settings), rows, [base_dir],
                                                       [*TRAINING_CODE, Path(__file__)]))
    # Counted as the SFT stage counts them: the report's tokens/s is then a rate, not 0.
    arguments = {**trainer_arguments(settings.optim, str(checkpoints.root)),
                 "include_num_input_tokens_seen": "non_padding"}
    lora = settings.lora
    trainer = RewardTrainer(
        model=model, args=RewardConfig(**arguments), train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                               target_modules=list(lora.target_modules), task_type="SEQ_CLS"),
    )
    trainable, total = trainable_parameters(trainer.model)
    training = train_resumably(trainer, checkpoints)
    merged = trainer.model.merge_and_unload()
    with written_whole(out_dir) as partial:
        merged.save_pretrained(partial)
        save_tokenizer(tokenizer, partial)
    checkpoints.finish()
    scorer = RewardModel(str(out_dir), batch_size=settings.optim.batch_size)
    report = {
        **training, "train_pairs": len(train), "heldout_pairs": len(heldout),
        "trainable_params": trainable, "total_params": total, "artifact_mb": directory_size_mb(out_dir),
        "heldout": scorer.pair_outcomes(heldout), "train": scorer.pair_outcomes(train),
    }
    if heldout_code_pairs:
        report["heldout_code_pairs"] = scorer.pair_outcomes(code_pair_rows(heldout_code_pairs))
    scorer.close()
    return report
