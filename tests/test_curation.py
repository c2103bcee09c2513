"""Curation filters on tiny in-memory rows."""

from tunelab.curation import CurateConfig, curate, jaccard, max_consecutive_repeat, shingles

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
    config = CurateConfig(val_fraction=0.0)
    train, val, report = curate(rows, config)
    assert report["removed"] == {
        "instruction_too_short": 1, "response_too_short": 1, "response_too_long": 0, "repetition": 1,
        "refusal": 1, "not_english": 1, "exact_duplicate": 1, "near_duplicate": 1,
    }
    assert report["kept_rows"] == 2 and len(train) == 2 and val == []
    assert report["input_rows"] == len(rows)


def test_split_is_seeded_and_disjoint():
    rows = [row(f"Explain topic number {i} about {w} clearly.") for i, w in enumerate("abcdefghijklmnopqrst")]
    config = CurateConfig(val_fraction=0.2, near_duplicate_jaccard=0.95, english_only=False)
    train1, val1, _ = curate(rows, config)
    train2, val2, _ = curate(rows, config)
    assert train1 == train2 and val1 == val2
    assert len(val1) == 4 and len(train1) == 16
    ids = {r["messages"][0]["content"] for r in train1} & {r["messages"][0]["content"] for r in val1}
    assert not ids


def test_repeat_and_jaccard_helpers():
    assert max_consecutive_repeat("a b b b c") == 3
    assert max_consecutive_repeat("line\nline\nother") == 2
    a, b = shingles("the cat sat on the mat", 2), shingles("the cat sat on a mat", 2)
    assert 0 < jaccard(a, b) < 1 and jaccard(a, a) == 1.0
