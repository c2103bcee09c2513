"""Minimal revisions that make an answer follow its verifiable instructions.

When none of the SFT model's sampled answers to a prompt follows all its instructions, the
preference stage still gets a pair: the chosen answer is the rejected one, revised by the
smallest rule-based edit per instruction (drop the commas, lowercase it, append the requested
ending, wrap it in quotes...), and kept only if IFEval's own checkers then pass it. Chosen and
rejected differ only where the instructions are concerned, the "contrastive revision" idea of
CLAIR (D'Oosterlinck et al., 2024: minimally contrasting pairs train preference methods more
precisely than two unrelated samples). Edits that would have to invent content (make an answer
longer, add sentences) are not attempted: those instructions need an on-policy answer that
already follows them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tunelab.tasks.instructions import score_response

Reviser = Callable[[str, dict[str, Any]], "str | None"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def _no_comma(text: str, _: dict) -> str:
    return re.sub(r"\s*,\s*", " ", text)


def _forbidden_words(text: str, kwargs: dict) -> str:
    for word in kwargs.get("forbidden_words") or []:
        text = re.sub(r"\b" + re.escape(word) + r"\b", "", text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", text)


def _keywords(text: str, kwargs: dict) -> str:
    missing = [k for k in kwargs.get("keywords") or [] if not re.search(re.escape(k), text, flags=re.IGNORECASE)]
    if not missing:
        return text
    return text.rstrip() + "\n\nKey terms: " + " and ".join(missing) + "."


def _fewer_words(text: str, kwargs: dict) -> str | None:
    if kwargs.get("relation") != "less than":
        return None  # "at least" would need new content
    limit = int(kwargs["num_words"]) - 1
    kept, count = [], 0
    for sentence in _sentences(text):  # whole sentences, so the answer still reads as one
        words = len(re.findall(r"\w+", sentence))
        if count + words > limit:
            break
        kept.append(sentence)
        count += words
    if kept:
        return " ".join(kept)
    return " ".join(text.split()[: max(1, limit // 2)])  # one long sentence: cut it well inside the limit


def _fewer_sentences(text: str, kwargs: dict) -> str | None:
    if kwargs.get("relation") != "less than":
        return None
    return " ".join(_sentences(text)[: max(1, int(kwargs["num_sentences"]) - 1)])


def _bullets(text: str, kwargs: dict) -> str | None:
    count = int(kwargs["num_bullets"])
    sentences = [s.lstrip("*- ").strip() for s in _sentences(text.replace("*", ""))]
    if len(sentences) < count:
        return None
    items = sentences[: count - 1] + [" ".join(sentences[count - 1 :])]
    return "\n".join(f"* {item}" for item in items)


def _highlights(text: str, kwargs: dict) -> str | None:
    count = int(kwargs["num_highlights"])
    sentences = _sentences(text.replace("*", ""))
    if len(sentences) < count:
        return None
    return " ".join([f"*{s}*" for s in sentences[:count]] + sentences[count:])


def _title(text: str, _: dict) -> str:
    words = re.findall(r"[A-Za-z]+", text)[:4] or ["Answer"]
    return f"<<{' '.join(words).title()}>>\n\n{text.lstrip()}"


def _postscript(text: str, kwargs: dict) -> str:
    return f"{text.rstrip()}\n\n{kwargs.get('postscript_marker') or 'P.S.'} I hope this helps."


def _end_phrase(text: str, kwargs: dict) -> str:
    return f"{text.rstrip()}\n\n{kwargs['end_phrase']}"


def _lowercase(text: str, _: dict) -> str:
    return text.lower()


def _capitals(text: str, _: dict) -> str:
    return text.upper()


def _quotation(text: str, _: dict) -> str:
    return '"' + text.strip().strip('"') + '"'


# Applied in this order: content edits first, then layout, additions at the ends, case, and the
# quotation marks last, since they must enclose everything else.
REVISERS: dict[str, Reviser] = {
    "keywords:forbidden_words": _forbidden_words,
    "length_constraints:number_sentences": _fewer_sentences,
    "length_constraints:number_words": _fewer_words,
    "detectable_format:number_bullet_lists": _bullets,
    "detectable_format:number_highlighted_sections": _highlights,
    "keywords:existence": _keywords,
    "detectable_format:title": _title,
    "detectable_content:postscript": _postscript,
    "startend:end_checker": _end_phrase,
    "punctuation:no_comma": _no_comma,
    "change_case:english_lowercase": _lowercase,
    "change_case:english_capital": _capitals,
    "startend:quotation": _quotation,
}


def revise(row: dict[str, Any], answer: str) -> str | None:
    """The answer minimally edited to follow every instruction of `row`, or None when no rule can.

    Only instructions the answer fails are edited; the result must pass IFEval's strict checkers.
    """
    verdicts = dict(zip(row["instruction_id_list"], score_response(row, answer)["strict"]))
    kwargs = dict(zip(row["instruction_id_list"], row["kwargs"]))
    revised = answer
    for instruction_id, reviser in REVISERS.items():
        if verdicts.get(instruction_id) is False:
            revised = reviser(revised, kwargs[instruction_id] or {})
            if revised is None or not revised.strip():
                return None
    if any(i not in REVISERS for i, ok in verdicts.items() if not ok):
        return None
    return revised if score_response(row, revised)["prompt_strict"] else None
