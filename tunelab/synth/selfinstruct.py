"""Self-Instruct / Alpaca: grow new task instructions from a seed set by few-shot prompting.

Each request shows the teacher a numbered list of tasks (Self-Instruct: 6 human-written seed tasks
and 2 machine-written ones) and lets it continue with the next task. A candidate is kept only if
it passes the recipe's filters: 3-150 words, no task a text model cannot do (images, files,
plots), and ROUGE-L below the threshold (0.7 in the paper) against every instruction pooled so
far, seed tasks included. The task is written into the assistant turn so any chat model, and any
server with a completions endpoint, continues the list instead of answering a task.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.core.config import check_range
from tunelab.core.generation import SamplingSettings
from tunelab.core.io import read_jsonl

LIST_REQUEST = (
    "Come up with a series of new, diverse tasks for an AI assistant. Each task is one clear "
    "instruction, optionally followed by an input that the instruction works on."
)
NO_INPUT = "<noinput>"
# Self-Instruct drops tasks a language model cannot carry out.
UNSUITABLE = re.compile(r"\b(image|images|graph|graphs|picture|pictures|file|files|map|maps|draw|plot|go to|video|audio)\b",
                        re.IGNORECASE)


@dataclass
class SelfInstructSettings:
    count: int = 32  # new instructions to produce (0 turns Self-Instruct off)
    seed_tasks: str = "data/seed/self_instruct_seed_tasks.jsonl"  # Self-Instruct's seed-task format
    human_examples: int = 6  # Self-Instruct: 6 seed tasks per prompt
    machine_examples: int = 2  # ...and 2 machine-written ones once the pool has them
    rouge_l_threshold: float = 0.7  # Self-Instruct: drop a candidate with ROUGE-L >= 0.7 to any pooled one
    min_words: int = 3
    max_words: int = 150
    instruction: SamplingSettings = field(
        default_factory=lambda: SamplingSettings(max_new_tokens=64, temperature=0.7, top_p=0.9,
                                               repetition_penalty=1.0, batch_size=48)
    )  # Self-Instruct sampled tasks at temperature 0.7 with top_p 0.5

    def __post_init__(self) -> None:
        check_range("generate.self_instruct.count", self.count, 0)
        check_range("generate.self_instruct.human_examples", self.human_examples, 1)
        check_range("generate.self_instruct.machine_examples", self.machine_examples, 0)
        check_range("generate.self_instruct.rouge_l_threshold", self.rouge_l_threshold, 0.0, 1.0)


def load_seed_tasks(path: str | Path) -> list[dict[str, str]]:
    """Seed tasks as {'instruction', 'input'} (first instance's input), validated."""
    tasks = []
    for number, row in enumerate(read_jsonl(path), start=1):
        if not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
            raise ValueError(f"{path}: task {number} has no instruction")
        instances = row.get("instances") or [{}]
        tasks.append({"instruction": row["instruction"].strip(), "input": (instances[0].get("input") or "").strip()})
    if not tasks:
        raise ValueError(f"{path} holds no seed tasks")
    return tasks


def format_task(number: int, task: dict[str, str]) -> str:
    return f"Task {number}: {task['instruction']}\nInput: {task['input'] or NO_INPUT}\n\n"


def build_prompt(tokenizer: Any, examples: list[dict[str, str]]) -> str:
    """A chat prompt whose assistant turn already lists the examples and opens the next task."""
    listing = "".join(format_task(i + 1, task) for i, task in enumerate(examples))
    head = tokenizer.apply_chat_template([{"role": "user", "content": LIST_REQUEST}], tokenize=False,
                                         add_generation_prompt=True)
    return head + listing + f"Task {len(examples) + 1}:"


def parse_task(text: str) -> dict[str, str]:
    """The continuation up to the next task, split into instruction and input.

    Small teachers often append an answer ("Output: ...") the listing never showed; it is cut.
    """
    text = re.split(r"\n\s*Task\b|\bOutput:", text, maxsplit=1)[0]
    instruction, _, task_input = text.partition("Input:")
    task_input = task_input.strip()
    return {"instruction": " ".join(instruction.split()),
            "input": "" if task_input in ("", NO_INPUT) else task_input}


def pick_examples(rng: random.Random, seed_tasks: list[dict], machine_tasks: list[dict],
                  config: SelfInstructSettings) -> list[dict]:
    human = rng.sample(seed_tasks, min(config.human_examples, len(seed_tasks)))
    machine = rng.sample(machine_tasks, min(config.machine_examples, len(machine_tasks)))
    examples = human + machine
    rng.shuffle(examples)
    return examples


class RougePool:
    """Instructions kept so far, and ROUGE-L (rouge_score, as Self-Instruct used) against them."""

    def __init__(self, instructions: list[str]):
        from rouge_score import rouge_scorer

        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self._tokens = [self._scorer._tokenizer.tokenize(text) for text in instructions]

    def max_similarity(self, text: str) -> float:
        from rouge_score.rouge_scorer import _score_lcs

        candidate = self._scorer._tokenizer.tokenize(text)
        return max((_score_lcs(other, candidate).fmeasure for other in self._tokens), default=0.0)

    def add(self, text: str) -> None:
        self._tokens.append(self._scorer._tokenizer.tokenize(text))


def rejection_reason(task: dict[str, str], pool: RougePool, config: SelfInstructSettings) -> str | None:
    words = task["instruction"].split()
    if len(words) < config.min_words:
        return "too_short"
    if len(words) > config.max_words:
        return "too_long"
    if UNSUITABLE.search(task["instruction"]):
        return "unsuitable_for_text_model"
    if not task["instruction"][0].isalnum():
        return "starts_with_punctuation"
    if pool.max_similarity(task["instruction"]) >= config.rouge_l_threshold:
        return "rouge_l_similar"
    return None


def user_message(task: dict[str, str]) -> str:
    return task["instruction"] if not task["input"] else f"{task['instruction']}\n\n{task['input']}"
