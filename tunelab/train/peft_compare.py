"""Seed #2's comparison of fine-tuning methods (LoRA vs prompt tuning) under one training budget.

Each method is trained with the sft section's data and settings, except `max_steps`, in its own
spawned process so its peak memory is its own; the trained model then generates greedy answers to
held-out prompts, which gives generation tokens/s. The report stage draws the table.
"""

from __future__ import annotations

import dataclasses
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tunelab.core.config import ConfigError, check_range
from tunelab.core.generation import (
    GenerationStats,
    SamplingSettings,
    chat_prompt,
    generate_texts,
)
from tunelab.train.sft import SFT_METHODS, SFTSettings


@dataclass
class PeftCompareSettings:
    methods: list[str] = field(default_factory=lambda: ["lora", "prompt_tuning"])  # seed #2's pair; [] = off
    max_steps: int = 8  # the same short budget for every method (the sft stage's run is the long one)
    generation_prompts: int = 16  # held-out prompts answered to measure generation speed
    sampling: SamplingSettings = field(default_factory=lambda: SamplingSettings(
        max_new_tokens=64, temperature=0.0, top_p=1.0, repetition_penalty=1.1, batch_size=16))

    def __post_init__(self) -> None:
        check_range("peft_compare.max_steps", self.max_steps, 1)
        check_range("peft_compare.generation_prompts", self.generation_prompts, 1)
        for method in self.methods:
            if method not in SFT_METHODS:
                raise ConfigError(f"peft_compare.methods: '{method}' is not allowed (allowed: {', '.join(SFT_METHODS)})")


def measure_method(
    method: str, base_dir: Path, train: list[dict], val: list[dict], sft: SFTSettings, config: PeftCompareSettings,
    prompts: list[str],
) -> dict[str, Any]:
    """Train `method`, then time its generation; runs in a fresh process."""
    from tunelab.core.models import load_tokenizer, load_variant
    from tunelab.train.sft import train_sft

    settings = dataclasses.replace(sft, peft=method, optim=dataclasses.replace(
        sft.optim, max_steps=config.max_steps, checkpoint_every=0), launch=dataclasses.replace(sft.launch, processes=1))
    with tempfile.TemporaryDirectory(prefix=f"tunelab-compare-{method}-") as scratch:
        out = Path(scratch) / "model"
        report = train_sft(base_dir, train, val, settings, out, Path(scratch) / "work")
        tokenizer = load_tokenizer(base_dir)
        model = load_variant(base_dir, [out])
        weights_mb = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 1e6
        stats = GenerationStats()
        generate_texts(model, tokenizer, [chat_prompt(tokenizer, p) for p in prompts], config.sampling, seed=0,
                       description=f"{method}: generation", stats=stats)
    return {
        "method": method,
        "trainable_params": report["trainable_params"],
        "trainable_pct": report["trainable_pct"],
        "train_runtime_s": report["runtime_s"],
        "train_loss": report["train_loss"],
        "eval_loss": report["eval_loss"],
        "peak_memory_mb": report["peak_memory_mb"],  # training, measured before generation
        "generation_tokens_per_s": stats.tokens_per_s,
        "artifact_mb": report["artifact_mb"],  # what the stage saves, tokenizer included
        "weights_mb": weights_mb,  # the trained weights alone (adapter, virtual tokens or whole model)
        "steps": report["steps"],
    }


def compare_methods(
    base_dir: Path, train: list[dict], val: list[dict], sft: SFTSettings, config: PeftCompareSettings,
    prompts: list[str],
) -> list[dict[str, Any]]:
    rows = []
    for method in config.methods:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            rows.append(pool.submit(measure_method, method, base_dir, train, val, sft, config,
                                    prompts[: config.generation_prompts]).result())
    return rows
