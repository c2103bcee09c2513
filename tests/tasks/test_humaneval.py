"""HumanEval prompt styles and completion extraction."""

from tunelab.tasks.humaneval import (
    STOP_SEQUENCES,
    extract_completion,
    generation_stops,
    load_humaneval,
)


def test_package_data_loads_all_problems():
    problems = load_humaneval()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    assert len(load_humaneval(limit=5)) == 5


def test_completion_style_cuts_at_top_level_code():
    generated = "    return a + b\n\ndef helper():\n    pass\n"
    assert extract_completion(generated, "completion") == "    return a + b\n"
    assert generation_stops("completion") == STOP_SEQUENCES and generation_stops("chat") is None


def test_chat_style_takes_the_code_block():
    generated = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds."
    assert extract_completion(generated, "chat") == "\ndef add(a, b):\n    return a + b\n"
    assert extract_completion("def f():\n    return 1", "chat") == "\ndef f():\n    return 1"
