"""On-policy preference pairs scored by verifiable instructions.

The SFT model answers each IFEval-format prompt K times; each answer scores the fraction of its
instructions it satisfies (strict, ties broken by loose). The worst answer is rejected. The chosen
one is the best answer when it follows every instruction; otherwise (with `revise`) it is the
rejected answer minimally revised until IFEval's checkers pass it (`tunelab.train.revision`), and where
no revision rule applies (or without `revise`) the best answer, as long as it beats the worst by
`min_margin`. Prompts left
with no better answer are dropped: they carry no preference signal.

A seeded fraction of the base prompts is held back as a validation split: its prompts are never
sampled for pairs, and the align stage scores models on them to choose settings, so the
held-out evaluation set is reported once and never tuned on.
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

from tunelab.core.config import check_range
from tunelab.core.generation import (
    GenerationStats,
    SamplingSettings,
    chat_prompt,
    generate_texts,
)
from tunelab.core.resumable import Shard, directory_digest, fill, fingerprint
from tunelab.tasks.instructions import InstructionMix, ifeval_accuracy, score_response
from tunelab.train.codepairs import CodePairSettings
from tunelab.train.revision import revise
from tunelab.train.scoredpairs import JudgePairSettings, RewardModelPairSettings


@dataclass
class PreferenceSources:
    """Where pairs come from; every source's rows go into one pairs.jsonl, each with its `source`."""

    verifiable: bool = True  # IFEval checkers on the SFT model's sampled answers (the settings above)
    code: CodePairSettings = field(default_factory=CodePairSettings)  # tunelab.train.codepairs
    reward_model: RewardModelPairSettings = field(default_factory=RewardModelPairSettings)  # tunelab.train.scoredpairs
    judge: JudgePairSettings = field(default_factory=JudgePairSettings)  # tunelab.train.scoredpairs


@dataclass
class PreferenceSettings:
    samples_per_prompt: int = 4  # K on-policy answers per prompt
    min_margin: float = 0.5  # chosen must beat rejected by this fraction of instructions
    instructions: InstructionMix = field(default_factory=InstructionMix)
    sampling: SamplingSettings = field(
        default_factory=lambda: SamplingSettings(max_new_tokens=128, temperature=0.9, top_p=0.95,
                                               repetition_penalty=1.1, batch_size=32)
    )  # a high temperature spreads the K answers so some pairs differ
    seed: int = 0  # the validation split and the prompts' instruction draws
    # The K answers' sampling alone: a seed study varies the answers while every prompt, and so
    # the held-out set that avoids their instruction mixes, stays the same.
    sampling_seed: int = 0
    checkpoint_every: int = 12  # prompts per resumable chunk (x samples_per_prompt answers)
    revise: bool = True  # no answer follows every instruction: chosen = the rejected one, minimally revised
    validation_fraction: float = 0.2  # base prompts held back for choosing align settings
    validation_sampling: SamplingSettings = field(
        default_factory=lambda: SamplingSettings(max_new_tokens=128, temperature=0.0, top_p=1.0,
                                               repetition_penalty=1.1, batch_size=40)
    )  # greedy, as evaluate.ifeval_sampling, so validation and held-out scores measure the same thing
    sources: PreferenceSources = field(default_factory=PreferenceSources)

    def __post_init__(self) -> None:
        check_range("preference.samples_per_prompt", self.samples_per_prompt, 1)
        check_range("preference.validation_fraction", self.validation_fraction, 0.0, 0.9)
        check_range("preference.checkpoint_every", self.checkpoint_every, 1)
        check_range("preference.min_margin", self.min_margin, 0.0, 1.0)


def answer_score(scored: dict[str, Any]) -> float:
    """Fraction of instructions followed strictly; loose following breaks ties by a small bonus."""
    return scored["fraction_strict"] + 1e-3 * scored["fraction_loose"]


def split_base_prompts(base_prompts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation) base prompts: a seeded `fraction` of them, in file order, is validation."""
    count = round(len(base_prompts) * fraction)
    chosen = set(random.Random(seed).sample(range(len(base_prompts)), count))
    train = [p for i, p in enumerate(base_prompts) if i not in chosen]
    if not train:
        raise ValueError(f"preference.validation_fraction {fraction} leaves no training prompts")
    return train, [p for i, p in enumerate(base_prompts) if i in chosen]


def _pick(row: dict, candidates: list[str], min_margin: float, with_revision: bool) -> tuple | str:
    """(chosen, chosen score, rejected, rejected score, source) for one prompt, or why there is none."""
    scored = sorted(((answer_score(score_response(row, text)), text) for text in candidates), key=lambda s: -s[0])
    (best_score, best), (worst_score, worst) = scored[0], scored[-1]
    differ = best_score > worst_score and best.strip() != worst.strip()
    if best_score >= 1.0 and differ:
        return best, best_score, worst, worst_score, "sft-on-policy"
    revised = revise(row, worst) if with_revision and worst_score < 1.0 else None
    if revised is not None:
        return revised, answer_score(score_response(row, revised)), worst, worst_score, "sft-on-policy+revision"
    if not differ:  # revision could not help either: instructions it has no rule for, or all answers follow
        return "tie"
    if best_score - worst_score < min_margin:
        return "small_margin"
    return best, best_score, worst, worst_score, "sft-on-policy"


def make_pairs(
    prompt_rows: list[dict], answers: list[list[str]], min_margin: float, with_revision: bool = True,
) -> tuple[list[dict], dict[str, Any]]:
    """One pair per prompt from its K scored answers (see the module docstring for the rule)."""
    pairs, margins = [], []
    dropped = {"tie": 0, "small_margin": 0}
    for row, candidates in zip(prompt_rows, answers):
        picked = _pick(row, candidates, min_margin, with_revision)
        if isinstance(picked, str):
            dropped[picked] += 1
            continue
        chosen, score_chosen, rejected, score_rejected, source = picked
        margins.append(score_chosen - score_rejected)
        pairs.append({
            "prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "score_chosen": round(score_chosen, 6),
            "score_rejected": round(score_rejected, 6),
            "source": source + "/ifeval-checkers",
            "key": row["key"],
            "instruction_id_list": row["instruction_id_list"],
            "kwargs": row["kwargs"],
        })
    report = {
        "prompts": len(prompt_rows),
        "pairs": len(pairs),
        "revised_pairs": sum(p["source"].startswith("sft-on-policy+revision") for p in pairs),
        **{f"dropped_{reason}": count for reason, count in dropped.items()},
        "margin_mean": mean(margins) if margins else 0.0,
        "margin_min": min(margins) if margins else 0.0,
        "score_chosen_mean": mean(p["score_chosen"] for p in pairs) if pairs else 0.0,
        "score_rejected_mean": mean(p["score_rejected"] for p in pairs) if pairs else 0.0,
    }
    return pairs, report


def sample_answers(model: Any, tokenizer: Any, prompt_rows: list[dict], config: PreferenceSettings,
                   work_dir: Path, model_dirs: list[Path]) -> tuple[list[list[str]], GenerationStats, Shard]:
    """K sampled answers per prompt, in prompt order, resumable chunk by chunk.

    Each chunk of `checkpoint_every` prompts is seeded by its index alone, so a run killed midway
    and resumed writes exactly the answers an uninterrupted run would, and no prompt is sampled
    twice. Partial work is keyed by the settings, the prompts, the models' bytes and this code.
    The caller removes the returned shard once its outputs are written.
    """
    k, size = config.samples_per_prompt, config.checkpoint_every
    code = hashlib.sha256(Path(sys.modules[__name__].__file__).read_bytes()).hexdigest()[:16]
    settings = {name: value for name, value in asdict(config).items() if name != "sources"}  # the other sources' own
    key = fingerprint(code, settings, [row["key"] for row in prompt_rows], directory_digest(*model_dirs))
    shard = Shard(work_dir, "answers", key)
    stats = GenerationStats()
    chunks = math.ceil(len(prompt_rows) / size)

    def make_chunk(index: int, done: list[dict], missing: int) -> list[dict]:
        rows = prompt_rows[len(done) : len(done) + min(size, missing)]
        prompts = [chat_prompt(tokenizer, row["prompt"]) for row in rows for _ in range(k)]
        flat = generate_texts(model, tokenizer, prompts, config.sampling, config.sampling_seed * 100_003 + index,
                              description=f"preference samples, chunk {index + 1}/{chunks}", stats=stats)
        return [{"key": row["key"], "answers": flat[i * k : (i + 1) * k]} for i, row in enumerate(rows)]

    sampled = fill(shard, len(prompt_rows), make_chunk, chunks, "preference samples")
    if [row["key"] for row in sampled] != [row["key"] for row in prompt_rows]:
        raise RuntimeError(f"{shard.directory} does not match the prompts; delete it and re-run")
    return [row["answers"] for row in sampled], stats, shard


def win_loss(name: str, reference: str, followed: list[bool], reference_followed: list[bool]) -> dict[str, int]:
    """Validation prompts (loose, whole prompt) that `name` follows and `reference` does not, and the reverse."""
    pairs = list(zip(followed, reference_followed))
    return {f"{name}_wins_over_{reference}": sum(a and not b for a, b in pairs),
            f"{name}_losses_to_{reference}": sum(b and not a for a, b in pairs)}


def validation_answers(model: Any, tokenizer: Any, rows: list[dict], sampling: SamplingSettings) -> dict[str, Any]:
    """A model's greedy answers to the validation prompts, scored; the align stage adds its own beside them."""
    prompts = [chat_prompt(tokenizer, row["prompt"]) for row in rows]
    answers = generate_texts(model, tokenizer, prompts, sampling, seed=0, description="validation answers")
    scored = [score_response(row, text) for row, text in zip(rows, answers)]
    return {
        "sampling": asdict(sampling),
        "rows": rows,
        "answers": answers,
        "prompt_loose": [s["prompt_loose"] for s in scored],
        "accuracy": ifeval_accuracy(scored),
    }
