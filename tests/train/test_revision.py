"""Minimal revisions: each failing instruction is fixed by its edit, and IFEval's checkers agree."""

import pytest

from tunelab.core.config import ConfigError
from tunelab.tasks.instructions import (
    DEFAULT_INSTRUCTIONS,
    InstructionMix,
    build_ifeval_rows,
    instruction_mix,
    score_response,
)
from tunelab.train.revision import REVISERS, revise

ANSWER = ("Rain forms when water vapour cools, condenses into droplets, and falls. Clouds hold billions of "
          "droplets. When they grow heavy enough, gravity wins. Some rain evaporates before landing. Farmers, "
          "cities and rivers all depend on it. Storms bring the heaviest rain of all.")
# Rules that would have to write new content instead of editing: no revision is attempted.
NEEDS_NEW_CONTENT = {("length_constraints:number_words", "at least"), ("length_constraints:number_sentences", "at least")}


def rows_for(instruction_id: str, count: int = 12) -> list[dict]:
    mix = InstructionMix(instruction_ids=[instruction_id], min_per_prompt=1, max_per_prompt=1, variants_per_prompt=count)
    return build_ifeval_rows(["Explain how rain forms."], mix, seed=3)


def test_every_default_instruction_has_a_reviser():
    assert set(DEFAULT_INSTRUCTIONS) == set(REVISERS)


# What each instruction gets to revise: an answer that breaks it in a way an edit can mend. Length
# limits get one far over any "less than" bound IFEval draws; capitals get English that langdetect
# still reads as English once upper-cased (it reads ANSWER upper-cased as German).
LONG_ANSWER = " ".join([ANSWER] * 40)
ENGLISH = "Hello there. This is a test of the capital letters in English, and it is written in English."


def answer_for(instruction_id: str, row: dict) -> str:
    if instruction_id.startswith("length_constraints"):
        return LONG_ANSWER
    if instruction_id == "change_case:english_capital":
        return ENGLISH
    forbidden = row["kwargs"][0].get("forbidden_words") or []
    return ANSWER + "".join(f" Think of the {word}." for word in forbidden[:2])  # something to remove


@pytest.mark.parametrize("instruction_id", DEFAULT_INSTRUCTIONS)
def test_a_failing_answer_is_revised_until_the_checker_passes(instruction_id):
    revised, untouched = 0, 0
    for row in rows_for(instruction_id):
        answer = answer_for(instruction_id, row)
        if score_response(row, answer)["prompt_strict"]:
            assert revise(row, answer) == answer  # nothing to fix: nothing edited
            untouched += 1
            continue
        result = revise(row, answer)
        relation = row["kwargs"][0].get("relation")
        if (instruction_id, relation) in NEEDS_NEW_CONTENT:
            assert result is None
            continue
        assert result is not None and result != answer and score_response(row, result)["prompt_strict"], \
            (row["kwargs"], result)
        revised += 1
    assert revised >= 3, f"only {revised} of 12 rows had something to revise ({untouched} already passed)"


def test_capitals_are_revised_when_the_language_check_agrees():
    row = rows_for("change_case:english_capital", count=1)[0]
    answer = "Hello there. This is a test of the capital letters in English."
    assert revise(row, answer) == answer.upper()


def test_combined_instructions_are_all_fixed_and_verified():
    mix = InstructionMix(instruction_ids=["punctuation:no_comma", "change_case:english_lowercase",
                                          "detectable_content:postscript", "startend:quotation"],
                         min_per_prompt=2, max_per_prompt=2, variants_per_prompt=8)
    for row in build_ifeval_rows(["Explain how rain forms."], mix, seed=5):
        revised = revise(row, ANSWER)
        assert revised is not None and score_response(row, revised)["prompt_strict"]


def test_evaluation_rows_avoid_training_mixes():
    mix = InstructionMix(min_per_prompt=1, max_per_prompt=2, variants_per_prompt=4)
    training = build_ifeval_rows([f"task {i}" for i in range(20)], mix, seed=0)
    seen = {instruction_mix(row) for row in training}
    heldout = build_ifeval_rows([f"other {i}" for i in range(10)], mix, seed=1, avoid_mixes=seen)
    assert not any(instruction_mix(row) in seen for row in heldout)


def test_an_exhausted_mix_is_one_clear_error():
    mix = InstructionMix(instruction_ids=["punctuation:no_comma"], min_per_prompt=1, max_per_prompt=1)
    with pytest.raises(ConfigError, match="no instruction combination left"):
        build_ifeval_rows(["a"], mix, seed=0, avoid_mixes={frozenset({"punctuation:no_comma"})}, draws=5)
