"""What a generation returns: the text, and why it stopped.

A row stops at its end (the tokenizer's EOS, which chat templates put at the end of a turn, or a
stop condition the caller set) or at max_new_tokens, cut off mid-thought. Curation needs to tell
the two apart: training on cut answers teaches a model to stop mid-sentence. OpenAI-compatible
servers report the same as finish_reason "stop" and "length". No torch here, so that data stages
can read the values without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ENDED = "end"
CUT_AT_LENGTH = "length"


@dataclass(frozen=True)
class Answer:
    text: str
    stopped: str  # ENDED or CUT_AT_LENGTH


def is_cut(row: dict[str, Any]) -> bool:
    """A conversation row with an answer cut at the token limit (`stopped` holds one reason per
    assistant turn; rows from files carry none, and are not)."""
    return CUT_AT_LENGTH in row.get("stopped", ())


def from_finish_reason(text: str, finish_reason: str | None) -> Answer:
    """An OpenAI-style choice (or vLLM output) as an Answer: only "length" means cut."""
    return Answer(text, CUT_AT_LENGTH if finish_reason == "length" else ENDED)
