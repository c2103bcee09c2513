"""Pair construction from scored answers."""

import pytest

from tunelab.train.align import to_unpaired
from tunelab.train.preference import make_pairs, split_base_prompts

ROW = {"key": 7, "prompt": "Describe rain. Do not use any commas.", "instruction_id_list": ["punctuation:no_comma"],
       "kwargs": [{}]}


def test_best_and_worst_become_a_pair():
    answers = [["Rain, wet, cold.", "Rain falls from clouds.", "Rain, falls."]]
    pairs, report = make_pairs([ROW], answers, min_margin=0.5)
    assert report["pairs"] == 1 and report["dropped_tie"] == 0
    pair = pairs[0]
    assert pair["chosen"] == [{"role": "assistant", "content": "Rain falls from clouds."}]
    assert pair["rejected"][0]["content"].count(",") > 0
    assert pair["score_chosen"] > pair["score_rejected"]
    assert pair["prompt"] == [{"role": "user", "content": ROW["prompt"]}]


def test_ties_and_small_margins_are_dropped():
    answers = [["a, b", "c, d"], ["no commas", "still none"]]
    pairs, report = make_pairs([ROW, ROW], answers, min_margin=0.5, with_revision=False)
    assert pairs == [] and report["dropped_tie"] == 2


def test_without_a_following_answer_the_worst_is_revised_into_the_chosen():
    pairs, report = make_pairs([ROW, ROW], [["a, b", "c, d"], ["no commas", "still none"]], min_margin=0.5)
    assert report["pairs"] == 1 and report["revised_pairs"] == 1 and report["dropped_tie"] == 1
    assert pairs[0]["rejected"][0]["content"] == "c, d" and pairs[0]["chosen"][0]["content"] == "c d"
    assert pairs[0]["source"].startswith("sft-on-policy+revision") and pairs[0]["score_chosen"] > 1.0 - 1e-9


def test_a_following_answer_beats_revision():
    pairs, report = make_pairs([ROW], [["Rain falls.", "Rain, falls."]], min_margin=0.5)
    assert report["revised_pairs"] == 0 and pairs[0]["chosen"][0]["content"] == "Rain falls."


def test_validation_split_is_seeded_and_disjoint():
    bases = [f"prompt {i}" for i in range(10)]
    train, validation = split_base_prompts(bases, 0.2, seed=0)
    assert len(validation) == 2 and not set(train) & set(validation) and sorted(train + validation) == sorted(bases)
    assert split_base_prompts(bases, 0.2, seed=0) == (train, validation)
    assert split_base_prompts(bases, 0.0, seed=0) == (bases, [])
    with pytest.raises(ValueError, match="no training prompts"):
        split_base_prompts(["only one"], 0.9, seed=0)


def test_kto_rows_are_derived_from_pairs():
    pairs, _ = make_pairs([ROW], [["Rain, wet.", "Rain is wet."]], min_margin=0.5)
    rows = to_unpaired(pairs)
    assert [r["label"] for r in rows] == [True, False]
    assert rows[0]["completion"] == pairs[0]["chosen"] and rows[1]["completion"] == pairs[0]["rejected"]
