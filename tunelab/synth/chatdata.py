"""Existing instruction data (Alpaca or ShareGPT JSON) brought in through `datasets`.

Alpaca rows: `instruction`, `input` (may be empty), `output`. ShareGPT rows: `conversations`, a
list of `{"from": "system"|"human"|"gpt", "value": ...}`. Both become TuneLab conversations
(`messages`), with the source recorded, and go through curation like generated rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tunelab.core.io import load_records

CONVERSATION = ("messages",)  # the fields every TuneLab conversation row has (Hugging Face conversational format)
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass
class ImportSpec:
    format: Literal["alpaca", "sharegpt"] = "alpaca"
    path: str = ""  # a local JSON/JSONL file, or a hub dataset id (e.g. tatsu-lab/alpaca)
    split: str = "train"
    limit: int = 0  # first N rows; 0 = all


def alpaca_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    if not row.get("instruction") or not row.get("output"):
        raise ValueError("an Alpaca row needs 'instruction' and 'output'")
    user = row["instruction"].strip()
    if (row.get("input") or "").strip():
        user += "\n\n" + row["input"].strip()
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"].strip()}]


def sharegpt_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("a ShareGPT row needs a non-empty 'conversations' list")
    messages = []
    for turn in turns:
        role = SHAREGPT_ROLES.get(turn.get("from"))
        if role is None:
            raise ValueError(f"unknown ShareGPT speaker {turn.get('from')!r}")
        messages.append({"role": role, "content": str(turn.get("value", "")).strip()})
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()  # a conversation must end on an answer to be trained on
    if not any(m["role"] == "user" for m in messages):
        raise ValueError("a ShareGPT conversation has no human turn followed by an answer")
    return messages


CONVERTERS = {"alpaca": alpaca_messages, "sharegpt": sharegpt_messages}


def load_import(spec: ImportSpec, index: int) -> list[dict[str, Any]]:
    if not spec.path:
        raise ValueError(f"generate.imports[{index}].path is empty")
    rows = load_records(spec.path, spec.split)
    rows = rows[: spec.limit] if spec.limit else rows
    converted = []
    for number, row in enumerate(rows):
        try:
            messages = CONVERTERS[spec.format](row)
        except ValueError as err:
            raise ValueError(f"{spec.path}: row {number + 1}: {err}") from err
        converted.append({"id": f"{spec.format}{index}-{number:06d}", "messages": messages,
                          "source": f"{spec.format}:{spec.path}", "teacher": "dataset"})
    return converted
