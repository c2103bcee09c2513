"""On-policy preference pairs scored by verifiable instructions.

The SFT model answers each IFEval-format prompt K times; each answer scores the fraction of its
instructions it satisfies (strict, ties broken by loose). The best answer is chosen, the worst
rejected, when their scores differ by at least `min_margin`; prompts whose answers all tie are
dropped because they carry no preference signal.
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

from tunelab.config import check_range
from tunelab.generation import GenerationStats, SamplingConfig, chat_prompt, generate_texts
from tunelab.instructions import InstructionMix, score_response
from tunelab.resumable import Shard, directory_digest, fill, fingerprint


@dataclass
class PreferenceConfig:
    samples_per_prompt: int = 4  # K on-policy answers per prompt
    min_margin: float = 0.5  # chosen must beat rejected by this fraction of instructions
    instructions: InstructionMix = field(default_factory=InstructionMix)
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(max_new_tokens=128, temperature=0.9, top_p=0.95,
                                               repetition_penalty=1.1, batch_size=32)
    )  # a high temperature spreads the K answers so some pairs differ
    seed: int = 0
    checkpoint_every: int = 12  # prompts per resumable chunk (x samples_per_prompt answers)

    def __post_init__(self) -> None:
        check_range("preference.samples_per_prompt", self.samples_per_prompt, 2)
        check_range("preference.checkpoint_every", self.checkpoint_every, 1)
        check_range("preference.min_margin", self.min_margin, 0.0, 1.0)


def answer_score(scored: dict[str, Any]) -> float:
    """Fraction of instructions followed strictly; loose following breaks ties by a small bonus."""
    return scored["fraction_strict"] + 1e-3 * scored["fraction_loose"]


def make_pairs(
    prompt_rows: list[dict], answers: list[list[str]], min_margin: float
) -> tuple[list[dict], dict[str, Any]]:
    """Best-vs-worst pairs from K scored answers per prompt."""
    pairs, margins, ties, small = [], [], 0, 0
    for row, candidates in zip(prompt_rows, answers):
        scored = [(answer_score(score_response(row, text)), text) for text in candidates]
        best = max(scored, key=lambda s: s[0])
        worst = min(scored, key=lambda s: s[0])
        margin = best[0] - worst[0]
        if margin <= 0 or best[1].strip() == worst[1].strip():
            ties += 1
            continue
        if margin < min_margin:
            small += 1
            continue
        margins.append(margin)
        pairs.append({
            "prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": best[1]}],
            "rejected": [{"role": "assistant", "content": worst[1]}],
            "score_chosen": round(best[0], 6),
            "score_rejected": round(worst[0], 6),
            "source": "sft-on-policy/ifeval-checkers",
            "key": row["key"],
            "instruction_id_list": row["instruction_id_list"],
            "kwargs": row["kwargs"],
        })
    report = {
        "prompts": len(prompt_rows),
        "pairs": len(pairs),
        "dropped_ties": ties,
        "dropped_small_margin": small,
        "margin_mean": mean(margins) if margins else 0.0,
        "margin_min": min(margins) if margins else 0.0,
        "score_chosen_mean": mean(p["score_chosen"] for p in pairs) if pairs else 0.0,
        "score_rejected_mean": mean(p["score_rejected"] for p in pairs) if pairs else 0.0,
    }
    return pairs, report


def sample_answers(model: Any, tokenizer: Any, prompt_rows: list[dict], config: PreferenceConfig,
                   work_dir: Path, model_dirs: list[Path]) -> tuple[list[list[str]], GenerationStats, Shard]:
    """K sampled answers per prompt, in prompt order, resumable chunk by chunk.

    Each chunk of `checkpoint_every` prompts is seeded by its index alone, so a run killed midway
    and resumed writes exactly the answers an uninterrupted run would, and no prompt is sampled
    twice. Partial work is keyed by the settings, the prompts, the models' bytes and this code.
    The caller removes the returned shard once its outputs are written.
    """
    k, size = config.samples_per_prompt, config.checkpoint_every
    code = hashlib.sha256(Path(sys.modules[__name__].__file__).read_bytes()).hexdigest()[:16]
    key = fingerprint(code, asdict(config), [row["key"] for row in prompt_rows], directory_digest(*model_dirs))
    shard = Shard(work_dir, "answers", key)
    stats = GenerationStats()
    chunks = math.ceil(len(prompt_rows) / size)

    def make_chunk(index: int, done: list[dict], missing: int) -> list[dict]:
        rows = prompt_rows[len(done) : len(done) + min(size, missing)]
        prompts = [chat_prompt(tokenizer, row["prompt"]) for row in rows for _ in range(k)]
        flat = generate_texts(model, tokenizer, prompts, config.sampling, config.seed * 100_003 + index,
                              description=f"preference samples, chunk {index + 1}/{chunks}", stats=stats)
        return [{"key": row["key"], "answers": flat[i * k : (i + 1) * k]} for i, row in enumerate(rows)]

    sampled = fill(shard, len(prompt_rows), make_chunk, chunks, "preference samples")
    if [row["key"] for row in sampled] != [row["key"] for row in prompt_rows]:
        raise RuntimeError(f"{shard.directory} does not match the prompts; delete it and re-run")
    return [row["answers"] for row in sampled], stats, shard
