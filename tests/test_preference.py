"""Pair construction from scored answers."""

from tunelab.align import to_unpaired
from tunelab.preference import make_pairs

ROW = {"key": 7, "prompt": "Describe rain. Do not use any commas.", "instruction_id_list": ["punctuation:no_comma"],
       "kwargs": [{}]}


def test_best_and_worst_become_a_pair():
    answers = [["Rain, wet, cold.", "Rain falls from clouds.", "Rain, falls."]]
    pairs, report = make_pairs([ROW], answers, min_margin=0.5)
    assert report["pairs"] == 1 and report["dropped_ties"] == 0
    pair = pairs[0]
    assert pair["chosen"] == [{"role": "assistant", "content": "Rain falls from clouds."}]
    assert pair["rejected"][0]["content"].count(",") > 0
    assert pair["score_chosen"] > pair["score_rejected"]
    assert pair["prompt"] == [{"role": "user", "content": ROW["prompt"]}]


def test_ties_and_small_margins_are_dropped():
    pairs, report = make_pairs([ROW, ROW], [["a, b", "c, d"], ["no commas", "still none"]], min_margin=0.5)
    assert pairs == [] and report["dropped_ties"] == 2


def test_kto_rows_are_derived_from_pairs():
    pairs, _ = make_pairs([ROW], [["Rain, wet.", "Rain is wet."]], min_margin=0.5)
    rows = to_unpaired(pairs)
    assert [r["label"] for r in rows] == [True, False]
    assert rows[0]["completion"] == pairs[0]["chosen"] and rows[1]["completion"] == pairs[0]["rejected"]
