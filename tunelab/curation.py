"""Quality filters for generated instruction/response rows.

The rules follow the Synthetic Instruction Tuner plan (SEEDS.md #4): response length in words,
at most N consecutive repeats, refusal keywords, English only, then exact and near-duplicate
removal by Jaccard similarity of word shingles. Every filter reports how many rows it removed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from tunelab.config import ConfigError, check_range

WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class CurateConfig:
    min_response_words: int = 20  # seed #4: 20-500 words
    max_response_words: int = 500
    min_instruction_words: int = 3  # a one-word "request" is not an instruction
    max_consecutive_repeats: int = 3  # seed #4: max 3 consecutive repeats of a word or line
    refusal_phrases: list[str] = field(
        default_factory=lambda: ["I'm an AI", "I cannot", "I don't have", "As an AI", "I'm not able"]
    )
    english_only: bool = True
    near_duplicate_jaccard: float = 0.8  # seed #4: keep only rows with Jaccard < 0.8 to all kept
    shingle_size: int = 3  # word n-grams compared by the near-duplicate filter
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_response_words > self.max_response_words:
            raise ConfigError("curate.min_response_words must not exceed curate.max_response_words")
        check_range("curate.near_duplicate_jaccard", self.near_duplicate_jaccard, 0.0, 1.0)
        check_range("curate.val_fraction", self.val_fraction, 0.0, 0.9)
        check_range("curate.shingle_size", self.shingle_size, 1)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def max_consecutive_repeat(text: str) -> int:
    """Longest run of the same word, or the same non-empty line, in a row."""
    longest = 0
    for units in (words(text), [l.strip().lower() for l in text.splitlines() if l.strip()]):
        run = 0
        previous = None
        for unit in units:
            run = run + 1 if unit == previous else 1
            previous = unit
            longest = max(longest, run)
    return longest


def has_refusal(text: str, phrases: list[str]) -> bool:
    lowered = text.lower().replace("’", "'")
    return any(phrase.lower() in lowered for phrase in phrases)


def is_english(text: str) -> bool:
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0  # langdetect samples internally; fix it so curation is reproducible
    try:
        return detect(text) == "en"
    except LangDetectException:  # no letters at all
        return False


def shingles(text: str, size: int) -> set[tuple[str, ...]]:
    tokens = words(text)
    if len(tokens) < size:
        return {tuple(tokens)}
    return {tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _row_text(row: dict[str, Any]) -> tuple[str, str]:
    user = next(m["content"] for m in row["messages"] if m["role"] == "user")
    assistant = next(m["content"] for m in row["messages"] if m["role"] == "assistant")
    return user, assistant


def rejection_reason(row: dict[str, Any], config: CurateConfig) -> str | None:
    """The first per-row filter a row fails, or None when it passes them all."""
    instruction, response = _row_text(row)
    response_words = len(words(response))
    if len(words(instruction)) < config.min_instruction_words:
        return "instruction_too_short"
    if response_words < config.min_response_words:
        return "response_too_short"
    if response_words > config.max_response_words:
        return "response_too_long"
    if max_consecutive_repeat(instruction + "\n" + response) > config.max_consecutive_repeats:
        return "repetition"
    if has_refusal(response, config.refusal_phrases):
        return "refusal"
    if config.english_only and not (is_english(instruction) and is_english(response)):
        return "not_english"
    return None


def curate(rows: list[dict[str, Any]], config: CurateConfig) -> tuple[list[dict], list[dict], dict]:
    """Filter, deduplicate and split rows. Returns (train, val, report)."""
    removed = {
        name: 0
        for name in (
            "instruction_too_short", "response_too_short", "response_too_long", "repetition",
            "refusal", "not_english", "exact_duplicate", "near_duplicate",
        )
    }
    kept: list[dict] = []
    seen_exact: set[str] = set()
    kept_shingles: list[set] = []
    for row in rows:
        reason = rejection_reason(row, config)
        if reason is None:
            instruction, _ = _row_text(row)
            normalised = " ".join(words(instruction))
            if normalised in seen_exact:
                reason = "exact_duplicate"
            else:
                grams = shingles(instruction, config.shingle_size)
                if any(jaccard(grams, other) >= config.near_duplicate_jaccard for other in kept_shingles):
                    reason = "near_duplicate"
                else:
                    seen_exact.add(normalised)
                    kept_shingles.append(grams)
        if reason is None:
            kept.append(row)
        else:
            removed[reason] += 1

    shuffled = list(kept)
    random.Random(config.seed).shuffle(shuffled)
    n_val = round(len(shuffled) * config.val_fraction) if len(shuffled) > 1 else 0
    if config.val_fraction > 0 and len(shuffled) > 1:
        n_val = max(1, n_val)  # an eval loss needs at least one row
    val, train = shuffled[:n_val], shuffled[n_val:]
    report = {
        "input_rows": len(rows),
        "kept_rows": len(kept),
        "train_rows": len(train),
        "val_rows": len(val),
        "removed": removed,
        "keep_rate": len(kept) / len(rows) if rows else 0.0,
    }
    return train, val, report
