"""Magpie: let an aligned chat model write user requests, then answer them.

Given only the chat template's "pre-query" part (everything up to where the user's text would
start), an instruction-tuned model completes it with a plausible user request. The pre-query
text is derived from the tokenizer's own chat template, so no model family is hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.config import check_range
from tunelab.generation import GenerationStats, SamplingConfig, chat_prompt, generate_texts

SENTINEL = "\u2063TUNELAB_USER_TEXT\u2063"


@dataclass
class GenerateConfig:
    num_instructions: int = 128  # instructions asked of the teacher before curation
    system_prompt: str | None = None  # None keeps the chat template's default system turn
    instruction: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(max_new_tokens=48, temperature=1.0, top_p=1.0,
                                               repetition_penalty=1.0, batch_size=32)
    )  # Magpie samples requests at temperature 1 for diversity
    response: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(max_new_tokens=192, temperature=0.7, top_p=0.9,
                                               repetition_penalty=1.1, batch_size=32)
    )
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("generate.num_instructions", self.num_instructions, 1)
        for name in ("instruction", "response"):
            sampling = getattr(self, name)
            check_range(f"generate.{name}.batch_size", sampling.batch_size, 1)
            check_range(f"generate.{name}.max_new_tokens", sampling.max_new_tokens, 1)


def pre_query_template(tokenizer: Any, system_prompt: str | None = None) -> str:
    """The chat-template text that precedes a user message's content."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": SENTINEL}
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    if SENTINEL not in rendered:
        raise ValueError("the chat template does not render the user's content; Magpie cannot use it")
    prefix = rendered.split(SENTINEL, 1)[0]
    bos = tokenizer.bos_token
    # Tokenizers that add BOS themselves would otherwise see it twice.
    if bos and prefix.startswith(bos) and getattr(tokenizer, "add_bos_token", False):
        prefix = prefix[len(bos) :]
    return prefix


def clean_instruction(text: str) -> str:
    """First user turn only: the model sometimes runs on into an assistant turn."""
    for marker in ("<|im_start|>", "<|im_end|>", "\nassistant\n", "\nuser\n"):
        text = text.split(marker, 1)[0]
    return text.strip()


def magpie(model: Any, tokenizer: Any, config: GenerateConfig, teacher_name: str) -> tuple[list[dict], dict]:
    """Generate `num_instructions` conversations. Returns (rows, stats)."""
    prefix = pre_query_template(tokenizer, config.system_prompt)
    instruction_stats, response_stats = GenerationStats(), GenerationStats()
    raw = generate_texts(
        model, tokenizer, [prefix] * config.num_instructions, config.instruction, config.seed,
        description="magpie instructions", stats=instruction_stats, keep_special_tokens=True,
    )
    instructions = [clean_instruction(text) for text in raw]
    kept = [(i, text) for i, text in enumerate(instructions) if text]
    prompts = [chat_prompt(tokenizer, text, config.system_prompt) for _, text in kept]
    responses = generate_texts(
        model, tokenizer, prompts, config.response, config.seed + 1,
        description="magpie responses", stats=response_stats,
    )
    rows = [
        {
            "id": f"magpie-{index:06d}",
            "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": response.strip()}],
            "source": "magpie",
            "teacher": teacher_name,
        }
        for (index, text), response in zip(kept, responses)
    ]
    stats = {
        "requested": config.num_instructions,
        "empty_instructions": config.num_instructions - len(kept),
        "rows": len(rows),
        "instruction_tokens_per_s": instruction_stats.tokens_per_s,
        "response_tokens_per_s": response_stats.tokens_per_s,
        "new_tokens": instruction_stats.new_tokens + response_stats.new_tokens,
        "generation_s": instruction_stats.seconds + response_stats.seconds,
    }
    return rows, stats
