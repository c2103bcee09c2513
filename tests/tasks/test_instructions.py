"""IFEval-format prompt building and scoring with lm-eval's checkers."""

import pytest

from tests.conftest import REPO
from tunelab.core.config import ConfigError
from tunelab.tasks.instructions import (
    InstructionMix,
    build_ifeval_rows,
    ifeval_accuracy,
    read_base_prompts,
    score_response,
    validate_ifeval_rows,
)


def test_rows_are_ifeval_format_and_seeded():
    mix = InstructionMix(min_per_prompt=1, max_per_prompt=3)
    rows = build_ifeval_rows(["Describe a cat.", "Explain rain."], mix, seed=3)
    assert rows == build_ifeval_rows(["Describe a cat.", "Explain rain."], mix, seed=3)
    assert rows != build_ifeval_rows(["Describe a cat.", "Explain rain."], mix, seed=4)
    assert validate_ifeval_rows(rows, "built") == rows
    for row in rows:
        assert set(row) == {"key", "prompt", "instruction_id_list", "kwargs"}
        assert 1 <= len(row["instruction_id_list"]) <= 3
        assert len(row["kwargs"]) == len(row["instruction_id_list"])


def test_unknown_instruction_id_is_rejected():
    with pytest.raises(ConfigError, match="unknown 'punctuation:no_commas'"):
        InstructionMix(instruction_ids=["punctuation:no_commas"])


def test_scoring_uses_ifeval_checkers_strict_and_loose():
    row = {"key": 1, "prompt": "Describe rain. Do not use any commas. Your entire response should be in English, "
           "and in all lowercase letters.", "instruction_id_list": ["punctuation:no_comma",
           "change_case:english_lowercase"], "kwargs": [{}, {}]}
    good = score_response(row, "rain falls from clouds when droplets grow heavy.")
    assert good["strict"] == [True, True] and good["prompt_strict"]
    bad = score_response(row, "Rain, as we know, falls.")
    assert bad["strict"] == [False, False]
    # loose scoring forgives a first line such as a greeting, as IFEval's loose mode does
    loose = score_response(row, "Sure, Here It Is\nrain falls from clouds.")
    assert loose["strict"] == [False, False] and loose["loose"] == [True, True]
    accuracy = ifeval_accuracy([good, bad])
    assert accuracy["prompt_level_strict"] == 0.5 and accuracy["inst_level_strict"] == 0.5


def test_sentence_counting_works_offline():
    row = {"key": 2, "prompt": "p", "instruction_id_list": ["length_constraints:number_sentences"],
           "kwargs": [{"num_sentences": 2, "relation": "less than"}]}
    assert score_response(row, "One sentence only.")["strict"] == [True]
    assert score_response(row, "One. Two. Three.")["strict"] == [False]


def test_seed_prompt_sets_are_disjoint():
    preference = read_base_prompts(REPO / "data/seed/preference_prompts.txt")
    heldout = read_base_prompts(REPO / "data/seed/heldout_prompts.txt")
    assert len(preference) == 60 and len(heldout) == 40
    assert not set(map(str.lower, preference)) & set(map(str.lower, heldout))


# A revised preference answer whose English check flipped between two pipeline runs (langdetect
# said "de" for it in 3 of 40 unseeded calls).
ALL_CAPITALS = (
    "STRETCHING BEFORE EXERCISE IS AN EXCELLENT WAY TO PREPARE FOR PHYSICAL ACTIVITY AS IT HELPS PREVENT INJURIES THAT "
    "OCCUR DURING HIGH-IMPACT ACTIVITIES LIKE RUNNING OR WEIGHTLIFTING WHICH CAN PUT ADDITIONAL STRAIN ON YOUR MUSCLES "
    "AND JOINTS. PROPER STRETCHING ALLOWS YOUR BODY TO RELAX AND RECOVER WITHOUT ANY DISCOMFORT OR PAIN. IT ALSO PLAYS "
    "A VITAL ROLE IN PREVENTING EXCESSIVE MUSCLE GROWTH DURING INTENSE WORKOUTS BY HELPING THE MUSCLE FIBERS ADAPT BY "
    "RELEASING EXCESS PROTEIN. BY DOING SO, YOU ENHANCE YOUR OVERALL FITNESS LEVELS MAKING IT EASIER TO SUSTAIN\n\n"
    "IS THERE ANYTHING ELSE I CAN HELP WITH?"
)


def test_the_english_check_is_a_function_of_the_text():
    row = {"key": 54, "prompt": "Explain why stretching before exercise can help.",
           "instruction_id_list": ["change_case:english_capital"], "kwargs": [{}]}
    # Unseeded, 80 calls all agree with probability about 0.925 ** 80 < 0.1%.
    verdicts = {score_response(row, ALL_CAPITALS)["strict"][0] for _ in range(80)}
    assert verdicts == {True}
