"""Magpie: let an aligned chat model write user requests, then answer them.

Given only the chat template's "pre-query" part (everything up to where the user's text would
start), an instruction-tuned model completes it with a plausible user request. The pre-query
text is derived from the tokenizer's own chat template by rendering a sentinel user message and
cutting at the sentinel, so no model family is hard-coded; the same trick finds the template's
end-of-turn marker, where a generated request is cut. A second user turn is asked for the same
way, after the first exchange.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.core.config import check_range
from tunelab.core.generation import SamplingSettings

SENTINEL = "\u2063TUNELAB_USER_TEXT\u2063"


@dataclass
class MagpieSettings:
    count: int = 96  # conversations to produce (0 turns Magpie off)
    system_prompt: str | None = None  # None keeps the chat template's own default system turn
    turns: int = 1  # 1, or 2 for a second user turn answered in context
    instruction: SamplingSettings = field(
        default_factory=lambda: SamplingSettings(max_new_tokens=48, temperature=1.0, top_p=1.0,
                                               repetition_penalty=1.0, batch_size=48)
    )  # Magpie samples requests at temperature 1 for diversity

    def __post_init__(self) -> None:
        check_range("generate.magpie.count", self.count, 0)
        check_range("generate.magpie.turns", self.turns, 1, 2)
        check_range("generate.magpie.instruction.batch_size", self.instruction.batch_size, 1)
        check_range("generate.magpie.instruction.max_new_tokens", self.instruction.max_new_tokens, 1)


def _render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as err:  # jinja raise_exception, e.g. Gemma's "System role not supported"
        raise ValueError(f"the chat template cannot render this conversation for Magpie: {err}") from err


def pre_query_template(tokenizer: Any, system_prompt: str | None = None, history: list[dict] | None = None) -> str:
    """The chat-template text that precedes the next user message's content.

    `history` (earlier user/assistant turns) gives the prompt for a follow-up user turn.
    """
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + list(history or [])
    rendered = _render(tokenizer, messages + [{"role": "user", "content": SENTINEL}])
    if SENTINEL not in rendered:
        raise ValueError("the chat template does not render the user's content; Magpie cannot use it")
    prefix = rendered.split(SENTINEL, 1)[0]
    bos = tokenizer.bos_token
    # Tokenizers that add BOS themselves would otherwise see it twice.
    if bos and prefix.startswith(bos) and getattr(tokenizer, "add_bos_token", False):
        prefix = prefix[len(bos) :]
    return prefix


def end_of_turn_markers(tokenizer: Any) -> list[str]:
    """Where a generated request ends: the template's end of a user turn, the start of the
    assistant's turn (a model may skip the end marker), and the tokenizer's special tokens."""
    user_turn = _render(tokenizer, [{"role": "user", "content": SENTINEL}])
    with_reply = _render(tokenizer, [{"role": "user", "content": SENTINEL}], add_generation_prompt=True)
    end_of_user = user_turn.split(SENTINEL, 1)[1]
    assistant_header = with_reply[len(user_turn) :] if with_reply.startswith(user_turn) else ""
    markers = {line.strip() for text in (end_of_user, assistant_header) for line in text.splitlines() if line.strip()}
    markers.update(t for t in getattr(tokenizer, "all_special_tokens", []) if t)
    return sorted(markers, key=len, reverse=True)


def clean_instruction(text: str, markers: list[str]) -> str:
    """First user turn only: the model sometimes runs on into an assistant turn."""
    for marker in markers:
        text = text.split(marker, 1)[0]
    return text.strip()

