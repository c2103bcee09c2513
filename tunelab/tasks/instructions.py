"""Verifiable instructions in IFEval format, built and scored with lm-eval's IFEval checkers.

A row is `{"key", "prompt", "instruction_id_list", "kwargs"}`, the format of the IFEval file,
so the real IFEval data can be dropped in wherever these rows are used. Prompts are a base
request written for this repo plus one or more instruction descriptions from lm-eval's registry.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.core.config import ConfigError

NLTK_HINT = "run `make nltk-data` (unpacks NLTK's punkt_tab tokenizer into the virtualenv)"

DEFAULT_INSTRUCTIONS = [
    "punctuation:no_comma",
    "change_case:english_lowercase",
    "change_case:english_capital",
    "detectable_format:title",
    "startend:quotation",
    "startend:end_checker",
    "detectable_content:postscript",
    "keywords:existence",
    "keywords:forbidden_words",
    "length_constraints:number_words",
    "length_constraints:number_sentences",
    "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections",
]

REPEAT_PROMPT = "combination:repeat_prompt"


@dataclass
class InstructionMix:
    instruction_ids: list[str] = field(default_factory=lambda: list(DEFAULT_INSTRUCTIONS))
    min_per_prompt: int = 1
    max_per_prompt: int = 2
    variants_per_prompt: int = 1  # distinct instruction draws per base prompt
    # True: every prompt's first instruction takes the next type of a seeded shuffle of
    # instruction_ids, so each type leads about equally many prompts and per-type accuracy rests
    # on more than a handful of each; False: all of a prompt's instructions drawn at random.
    balanced: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.min_per_prompt <= self.max_per_prompt:
            raise ConfigError("min_per_prompt: need 1 <= min_per_prompt <= max_per_prompt")  # build names the section
        registry = _registry()
        for instruction_id in self.instruction_ids:
            if instruction_id not in registry.INSTRUCTION_DICT:
                raise ConfigError(
                    f"instruction_ids: unknown '{instruction_id}' "
                    f"(allowed: {', '.join(sorted(registry.INSTRUCTION_DICT))})"
                )


def _nltk_ready() -> None:
    """lm-eval's IFEval code downloads punkt_tab at import; make sure it is already here."""
    import nltk

    nltk.data.path.insert(0, str(Path(sys.prefix) / "nltk_data"))
    try:
        nltk.data.find("tokenizers/punkt_tab/english")
    except LookupError as err:
        raise RuntimeError(f"NLTK's punkt_tab data is missing: {NLTK_HINT}") from err


def _registry() -> Any:
    _nltk_ready()
    from langdetect import DetectorFactory
    from lm_eval.tasks.ifeval import instructions_registry, instructions_util

    # The change_case checkers ask langdetect whether the answer is English, and langdetect samples
    # n-grams from an unseeded generator: an all-capitals answer came out "de" in 3 of 40 calls,
    # which changed a preference pair's score between two runs. A fixed seed makes every verdict
    # a function of the text alone.
    DetectorFactory.seed = 0

    # lm-eval's count_sentences still loads the old punkt pickle; PunktTokenizer reads the
    # equivalent punkt_tab tables, which are what can be shipped offline.
    if not getattr(instructions_util, "_tunelab_patched", False):
        import nltk

        tokenizer = nltk.tokenize.PunktTokenizer("english")
        instructions_util._get_sentence_tokenizer = lambda: tokenizer
        instructions_util._tunelab_patched = True
    return instructions_registry


def read_base_prompts(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"base prompt file {path} does not exist")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"base prompt file {path} is empty")
    return prompts


def instruction_mix(row: dict) -> frozenset[str]:
    """What a prompt asks for, regardless of order and arguments: the set of its instruction ids."""
    return frozenset(row["instruction_id_list"])


def _draw_instructions(rng: random.Random, mix: InstructionMix, conflicts: dict, first: str | None = None
                       ) -> list[str]:
    count = rng.randint(mix.min_per_prompt, min(mix.max_per_prompt, len(mix.instruction_ids)))
    chosen: list[str] = [first] if first else []
    for candidate in rng.sample(mix.instruction_ids, len(mix.instruction_ids)):
        if len(chosen) >= count:
            break
        if candidate in chosen:
            continue
        clash = any(candidate in conflicts.get(c, set()) or c in conflicts.get(candidate, set()) for c in chosen)
        if not clash:
            chosen.append(candidate)
    return chosen


def build_ifeval_rows(base_prompts: list[str], mix: InstructionMix, seed: int, key_offset: int = 0,
                      avoid_mixes: set[frozenset[str]] = frozenset(), draws: int = 1000) -> list[dict]:
    """IFEval-format rows: each base prompt plus instructions drawn (seeded) from the mix.

    `avoid_mixes` are instruction sets (`instruction_mix`) not to repeat, e.g. every training
    prompt's, so an evaluation prompt asks for a combination no training prompt asked for; a row
    redraws until it finds one, and after `draws` tries the error names the mix settings.
    """
    registry = _registry()
    rng = random.Random(seed)
    leading = rng.sample(mix.instruction_ids, len(mix.instruction_ids)) if mix.balanced else []
    saved_state = random.getstate()  # lm-eval's builders draw from the global `random`
    rows = []
    try:
        for prompt_index, base in enumerate(base_prompts):
            for variant in range(mix.variants_per_prompt):
                first = leading[len(rows) % len(leading)] if leading else None
                for _ in range(draws):
                    ids = _draw_instructions(rng, mix, registry.INSTRUCTION_CONFLICTS, first)
                    if frozenset(ids) not in avoid_mixes:
                        break
                else:
                    raise ConfigError(
                        f"instructions: no instruction combination left that training prompts did not use after "
                        f"{draws} draws; allow more per prompt (max_per_prompt) or more instruction_ids")
                random.seed(rng.getrandbits(64))
                if REPEAT_PROMPT in ids:  # it asks for everything before it repeated: it comes last
                    ids = [i for i in ids if i != REPEAT_PROMPT] + [REPEAT_PROMPT]
                descriptions, kwargs = [], []
                for instruction_id in ids:
                    checker = registry.INSTRUCTION_DICT[instruction_id](instruction_id)
                    # The one builder that needs the request: the model must repeat it word for word.
                    arguments = ({"prompt_to_repeat": " ".join([base, *descriptions])}
                                 if instruction_id == REPEAT_PROMPT else {})
                    descriptions.append(checker.build_description(**arguments))
                    kwargs.append(checker.get_instruction_args() or {})
                rows.append({
                    "key": key_offset + prompt_index * mix.variants_per_prompt + variant,
                    "prompt": base + " " + " ".join(descriptions),
                    "instruction_id_list": ids,
                    "kwargs": kwargs,
                })
    finally:
        random.setstate(saved_state)
    return rows


def validate_ifeval_rows(rows: list[dict], where: str) -> list[dict]:
    """Reject rows that are not IFEval format, naming the first bad one."""
    registry = _registry()
    for number, row in enumerate(rows):
        missing = [k for k in ("key", "prompt", "instruction_id_list", "kwargs") if k not in row]
        if missing:
            raise ValueError(f"{where} row {number}: not IFEval format, lacks {', '.join(missing)}")
        if len(row["kwargs"]) != len(row["instruction_id_list"]):
            raise ValueError(f"{where} row {number}: kwargs and instruction_id_list differ in length")
        unknown = [i for i in row["instruction_id_list"] if i not in registry.INSTRUCTION_DICT]
        if unknown:
            raise ValueError(f"{where} row {number}: unknown instruction id {unknown[0]}")
    return rows


def score_response(row: dict[str, Any], response: str) -> dict[str, Any]:
    """Strict and loose per-instruction verdicts, as IFEval computes them."""
    _registry()
    from lm_eval.tasks.ifeval import utils

    example = utils.InputExample(
        key=row["key"], instruction_id_list=row["instruction_id_list"], prompt=row["prompt"],
        kwargs=row["kwargs"],
    )
    strict = utils.test_instruction_following_strict(example, response).follow_instruction_list
    loose = utils.test_instruction_following_loose(example, response).follow_instruction_list
    return {
        "strict": strict,
        "loose": loose,
        "prompt_strict": all(strict),
        "prompt_loose": all(loose),
        "fraction_strict": sum(strict) / len(strict),
        "fraction_loose": sum(loose) / len(loose),
    }


def ifeval_accuracy(scored: list[dict[str, Any]]) -> dict[str, float]:
    """Prompt- and instruction-level accuracy, strict and loose (the four IFEval numbers)."""
    if not scored:
        return {}
    n = len(scored)
    instructions = sum(len(s["strict"]) for s in scored)
    return {
        "prompt_level_strict": sum(s["prompt_strict"] for s in scored) / n,
        "prompt_level_loose": sum(s["prompt_loose"] for s in scored) / n,
        "inst_level_strict": sum(sum(s["strict"]) for s in scored) / instructions,
        "inst_level_loose": sum(sum(s["loose"]) for s in scored) / instructions,
    }
