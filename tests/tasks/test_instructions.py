"""IFEval-format prompt building and scoring with lm-eval's checkers."""

import json
from collections import Counter

import pytest

from tests.conftest import REPO
from tunelab.core.config import ConfigError
from tunelab.tasks.instructions import (
    REPEAT_PROMPT,
    InstructionMix,
    _registry,
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
    seed_tasks = [json.loads(line)["instruction"] for line in
                  (REPO / "data/seed/self_instruct_seed_tasks.jsonl").read_text().splitlines()]
    assert len(preference) == 60 and len(heldout) >= 150 and len(set(heldout)) == len(heldout)
    assert not set(map(str.lower, preference)) & set(map(str.lower, heldout))
    assert not set(map(str.lower, seed_tasks)) & set(map(str.lower, heldout))


def test_heldout_prompts_name_their_genre_and_length():
    heldout = read_base_prompts(REPO / "data/seed/heldout_prompts.txt")
    genres = [line.split("\t") for line in (REPO / "data/seed/heldout_prompts.genres.tsv").read_text().splitlines()]
    assert len(genres) == len(heldout) and all(len(fields) == 2 for fields in genres)
    assert len({genre for genre, _ in genres}) >= 15
    assert {length for _, length in genres} == {"short", "medium", "long"}


def test_balanced_draws_lead_with_every_type_equally_often():
    every_type = sorted(_registry().INSTRUCTION_DICT)
    bases = [f"Describe place number {n}." for n in range(2 * len(every_type))]
    single = build_ifeval_rows(bases, InstructionMix(instruction_ids=every_type, max_per_prompt=1, balanced=True), 5)
    assert Counter(row["instruction_id_list"][0] for row in single) == Counter({kind: 2 for kind in every_type})
    rows = build_ifeval_rows(bases, InstructionMix(instruction_ids=every_type, max_per_prompt=2, balanced=True), 5)
    assert validate_ifeval_rows(rows, "built") == rows
    assert min(Counter(kind for row in rows for kind in row["instruction_id_list"]).values()) >= 2
    for row in rows:  # a prompt never asks for two conflicting things
        ids = row["instruction_id_list"]
        conflicts = _registry().INSTRUCTION_CONFLICTS
        assert len(set(ids)) == len(ids) and not any(b in conflicts[a] for a in ids for b in ids if a != b)
    repeats = [row for row in rows if REPEAT_PROMPT in row["instruction_id_list"]]
    assert len(repeats) >= 2
    for row in repeats:  # the request to repeat is all of the prompt before the repeat instruction
        assert row["instruction_id_list"][-1] == REPEAT_PROMPT
        request = row["kwargs"][-1]["prompt_to_repeat"]
        assert request.startswith("Describe place number") and row["prompt"].startswith(request + " First repeat")
        only_repeat = {**row, "instruction_id_list": [REPEAT_PROMPT], "kwargs": [row["kwargs"][-1]]}
        assert score_response(only_repeat, request + " Here is my answer.")["strict"] == [True]
        assert score_response(only_repeat, "Here is my answer.")["strict"] == [False]


def test_unbalanced_draws_are_unchanged_by_the_balanced_option():
    """The preference stage draws without balance: its prompts must stay what they were."""
    mix = InstructionMix(max_per_prompt=2)
    rows = build_ifeval_rows(["Describe a cat.", "Explain rain.", "Plan a picnic."], mix, seed=0)
    assert [row["instruction_id_list"] for row in rows] == [
        ["detectable_format:number_highlighted_sections", "detectable_content:postscript"],
        ["length_constraints:number_words"],
        ["keywords:forbidden_words"],
    ]  # what the draw gave before the option existed


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
