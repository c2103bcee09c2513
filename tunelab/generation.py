"""Batched transformers generation: left padding, length-sorted batches, seeded sampling."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm


@dataclass
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 0.95
    repetition_penalty: float = 1.1  # small models loop without it
    batch_size: int = 16


@dataclass
class GenerationStats:
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    sampling: SamplingConfig,
    seed: int,
    description: str = "generating",
    stop_strings: list[str] | None = None,
    stats: GenerationStats | None = None,
    keep_special_tokens: bool = False,
) -> list[str]:
    """Continue each already-templated prompt; returns the new text only, in input order.

    Prompts are sorted by length so each batch pads little; each batch gets its own seed
    derived from `seed` and its position, so results do not depend on what ran before.
    `keep_special_tokens` leaves turn markers in the text for callers that cut at them.
    """
    if tokenizer.padding_side != "left":
        raise ValueError("batched generation needs a left-padding tokenizer")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    greedy = sampling.temperature <= 0
    progress = tqdm(total=len(prompts), desc=description, unit="seq")
    for start in range(0, len(order), sampling.batch_size):
        batch_ids = order[start : start + sampling.batch_size]
        encoded = tokenizer(
            [prompts[i] for i in batch_ids], return_tensors="pt", padding=True, add_special_tokens=False
        )
        torch.manual_seed(seed * 1_000_003 + start)
        began = time.perf_counter()
        with torch.inference_mode():
            generated = model.generate(
                **encoded,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=None,
                repetition_penalty=sampling.repetition_penalty,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                stop_strings=stop_strings,
                tokenizer=tokenizer if stop_strings else None,
            )
        new_tokens = generated[:, encoded["input_ids"].shape[1] :]
        if stats is not None:
            stats.seconds += time.perf_counter() - began
            stats.new_tokens += int((new_tokens != tokenizer.pad_token_id).sum())
        for row, index in enumerate(batch_ids):
            outputs[index] = _decode(tokenizer, new_tokens[row], keep_special_tokens)
        progress.update(len(batch_ids))
    progress.close()
    return outputs


def _decode(tokenizer: Any, token_ids: Any, keep_special_tokens: bool) -> str:
    if not keep_special_tokens:
        return tokenizer.decode(token_ids, skip_special_tokens=True)
    ids = [t for t in token_ids.tolist() if t != tokenizer.pad_token_id]
    return tokenizer.decode(ids, skip_special_tokens=False)


def chat_prompt(tokenizer: Any, user: str, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
