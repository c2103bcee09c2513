"""Curation filters on tiny in-memory rows."""

import random

from tunelab.synth.curation import (
    ContaminationIndex,
    CurateSettings,
    curate,
    max_consecutive_repeat,
)
from tunelab.synth.datacard import distinct_n, write_data_card
from tunelab.synth.dedup import ExactJaccardIndex, MinHashIndex, jaccard, shingles

GOOD_ANSWER = (
    "Bread rises because yeast eats the sugars in flour and releases carbon dioxide gas. "
    "The gluten network traps the gas in small pockets, so the dough swells and becomes light."
)


def row(instruction: str, answer: str = GOOD_ANSWER) -> dict:
    return {"messages": [{"role": "user", "content": instruction}, {"role": "assistant", "content": answer}]}


def test_each_filter_counts_what_it_removes():
    rows = [
        row("Explain how bread rises in an oven."),
        row("Explain how bread rises in an oven."),  # exact duplicate
        row("Explain how bread rises in an oven, please."),  # near duplicate: trigram Jaccard 5/6
        row("Hi"),  # instruction too short
        row("Tell me something about whales please.", "Too short."),
        row("Describe the moon landing in detail.", "I cannot help with that request because it is against my rules " * 3),
        row("Write a poem about the sea now.", "wave wave wave wave and the sea " + GOOD_ANSWER),
        row("Erkläre bitte, wie Brot im Ofen aufgeht und warum.",
            "Brot geht auf, weil die Hefe Zucker im Mehl frisst und dabei Kohlendioxid freisetzt. "
            "Das Glutennetz hält das Gas in kleinen Taschen fest, sodass der Teig aufgeht und locker wird."),
        row("Give three tips for keeping a tidy desk at work."),
    ]
    config = CurateSettings(val_fraction=0.0, near_duplicate_rouge_l=None)
    train, val, report, examples = curate(rows, config)
    assert report["removed"] == {
        "instruction_too_short": 1, "cut_at_length": 0, "response_too_short": 1, "response_too_long": 0, "repetition": 1,
        "refusal": 1, "not_english": 1, "code_failed_tests": 0, "contaminated": 0, "exact_duplicate": 1,
        "near_duplicate": 1, "near_duplicate_rouge_l": 0,
    }
    assert examples["refusal"][0]["messages"][0]["content"] == "Describe the moon landing in detail."
    assert report["kept_rows"] == 2 and len(train) == 2 and val == []
    assert report["input_rows"] == len(rows)


def test_answers_cut_at_the_token_limit_are_counted_and_dropped_when_asked():
    ended = {**row("Explain how bread rises in an oven."), "stopped": ["end"]}
    cut = {**row("Give three tips for keeping a tidy desk at work."), "stopped": ["length"]}
    second_turn_cut = {**row("Describe how a bicycle gear works to a child."), "stopped": ["end", "length"]}
    from_a_file = row("Summarise why the sky looks blue during the day.")  # says nothing: kept
    rows = [ended, cut, second_turn_cut, from_a_file]
    flagged = curate(rows, CurateSettings(val_fraction=0.0, near_duplicate_rouge_l=None))[2]
    assert flagged["kept_rows"] == 4 and flagged["cut_at_length"] == {"input": 2, "kept": 2}
    train, _, dropped, examples = curate(rows, CurateSettings(val_fraction=0.0, near_duplicate_rouge_l=None,
                                                               drop_cut_answers=True))
    assert train == [ended, from_a_file]
    assert dropped["removed"]["cut_at_length"] == 2 and dropped["cut_at_length"] == {"input": 2, "kept": 0}
    assert examples["cut_at_length"] == [cut, second_turn_cut]


def test_split_is_seeded_and_disjoint():
    rows = [row(f"Explain topic number {i} about {w} clearly.") for i, w in enumerate("abcdefghijklmnopqrst")]
    config = CurateSettings(val_fraction=0.2, near_duplicate_jaccard=0.95, english_only=False,
                          near_duplicate_rouge_l=None)
    train1, val1, _, _ = curate(rows, config)
    train2, val2, _, _ = curate(rows, config)
    assert train1 == train2 and val1 == val2
    assert len(val1) == 4 and len(train1) == 16
    ids = {r["messages"][0]["content"] for r in train1} & {r["messages"][0]["content"] for r in val1}
    assert not ids


def test_repeat_and_jaccard_helpers():
    assert max_consecutive_repeat("a b b b c") == 3
    assert max_consecutive_repeat("line\nline\nother") == 2
    a, b = shingles("the cat sat on the mat", 2), shingles("the cat sat on a mat", 2)
    assert 0 < jaccard(a, b) < 1 and jaccard(a, a) == 1.0


def test_minhash_finds_the_same_duplicates_as_exact_jaccard():
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(40)]
    texts = []
    for _ in range(150):
        base = rng.sample(vocabulary, 12)
        texts.append(" ".join(base))
        edited = list(base)
        edited[rng.randrange(12)] = rng.choice(vocabulary)  # one word changed: Jaccard often >= 0.8
        texts.append(" ".join(edited))
    verdicts = []
    for index in (MinHashIndex(0.8, 128), ExactJaccardIndex(0.8)):
        kept = []
        for text in texts:
            grams = shingles(text, 1)
            duplicate = index.near_duplicate_of(grams) is not None
            if not duplicate:
                index.add(grams)
            kept.append(duplicate)
        verdicts.append(kept)
    assert sum(verdicts[1]) > 50  # the corpus really has near duplicates
    assert verdicts[0] == verdicts[1]


def test_rouge_l_near_duplicates_and_teacher_variety():
    rows = [row("Write a short poem about the ocean at night."),
            row("Please write a short poem about the ocean at night time."),  # ROUGE-L 0.9, Jaccard < 0.8
            {**row("Give me a recipe for pancakes with blueberries."), "id": "m1@a", "request_id": "m1"},
            {**row("Give me a recipe for pancakes with blueberries."), "id": "m1@b", "request_id": "m1"}]
    _, _, report, _ = curate(rows, CurateSettings(val_fraction=0.0, english_only=False))
    assert report["removed"]["near_duplicate_rouge_l"] == 1
    assert report["removed"]["exact_duplicate"] == 0  # two teachers' answers to one request both stay
    assert report["kept_rows"] == 3


def test_decontamination_drops_overlap_with_evaluation_texts():
    evaluation = ["def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                  "    Check if in given list of numbers, are any two numbers closer to each other than given threshold.",
                  "Write a haiku about autumn leaves."]
    index = ContaminationIndex(evaluation, ngram=8)
    assert index.overlaps("Task: are any two numbers closer to each other than given threshold? Solve it.")
    assert index.overlaps("Please write a haiku about autumn leaves, in lowercase.")  # short text, contained
    assert not index.overlaps("Write a haiku about spring rain.")
    rows = [row("Write a haiku about autumn leaves, please."), row("Explain how tides work on the coast.")]
    _, _, report, _ = curate(rows, CurateSettings(val_fraction=0.0), evaluation)
    assert report["removed"]["contaminated"] == 1 and report["evaluation_texts"] == 2


def test_failing_code_is_dropped_and_code_is_not_judged_as_prose():
    code_answer = "```python\ndef zeros(n):\n    return [0, 0, 0, 0, 0][:n]\n```\n" + GOOD_ANSWER
    passing = {**row("Write zeros(n): a list of n zeros, n <= 5. Example: [0, 0, 0, 0, 0]", code_answer),
               "code": {"task_id": "t/1", "passed": True}}
    failing = {**row("Write ones(n): a list of n ones, n <= 5, for example [1, 1, 1, 1, 1].", code_answer),
               "code": {"task_id": "t/2", "passed": False}}
    _, _, report, _ = curate([passing, failing], CurateSettings(val_fraction=0.0))
    assert report["removed"]["code_failed_tests"] == 1 and report["kept_rows"] == 1


def test_data_card_reports_sources_lengths_and_rejections(tmp_path):
    requests = ["Explain how tides work on the coast.", "Give three tips for a tidy desk.",
                "Describe a sunrise over the mountains.", "List four fruits that grow on trees.",
                "Summarise why bees matter to farms.", "Suggest a name for a friendly robot."]
    rows = [{**row(text), "source": s, "teacher": "t"}
            for text, s in zip(requests, ["magpie", "magpie", "self_instruct", "self_instruct", "code:tunelab", "magpie"])]
    rows.append({**row("Hi"), "source": "magpie", "teacher": "t"})
    train, val, report, examples = curate(rows, CurateSettings(val_fraction=0.0, english_only=False))
    card = tmp_path / "data_card.md"
    write_data_card(card, train + val, report, examples, None)
    text = card.read_text()
    assert "| magpie | 4 | 3 | 75% |" in text
    assert "instruction_too_short" in text and "request: Hi" in text
    assert "distinct-1" in text
    assert "cut at the teacher's token limit (not ended): 0 generated, 0 kept" in text
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b c"], 2) == 1.0
