"""Batched transformers generation: left padding, length-sorted batches, seeded sampling.

Sampling runs in `NucleusSampler`, not in transformers' warpers: their top-p sorts the whole
whole vocabulary for every row at every step, a large share of the generate stage's time on a CPU
(the profile is in docs/performance.md); the nucleus is found among the most likely tokens instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList


@dataclass
class SamplingSettings:
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


class NucleusSampler(LogitsProcessor):
    """Draws the next token (temperature, then top-p) and returns scores that make it the argmax.

    Generate then runs its greedy path, so transformers' sampling warpers never sort the vocabulary.
    The distribution is the nucleus sampling one: a token is kept when the tokens more likely than
    it hold less than `top_p` of the probability (transformers' rule, no top-k). The nucleus is
    looked for among the `window` most likely tokens (torch.topk); when they hold less than
    `top_p` for some row, the batch falls back to a full sort, so the result is exact either way.
    It runs after transformers' own processors (the repetition penalty), like its warpers did.
    """

    def __init__(self, temperature: float, top_p: float, window: int = 256):
        self.temperature = temperature
        self.top_p = top_p
        self.window = window

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            candidates, token_ids = self._nucleus(probs, min(self.window, probs.shape[-1]))
            if candidates is None:
                candidates, token_ids = self._nucleus(probs, probs.shape[-1])
            chosen = token_ids.gather(-1, torch.multinomial(candidates, 1))
        else:
            chosen = torch.multinomial(probs, 1)
        return torch.full_like(scores, float("-inf")).scatter_(-1, chosen, 0.0)

    def _nucleus(self, probs: torch.Tensor, size: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The `size` most likely tokens with those outside the nucleus zeroed; None if `size` is too few."""
        top, token_ids = probs.topk(size, dim=-1)
        mass = top.cumsum(dim=-1)
        if size < probs.shape[-1] and bool((mass[:, -1] < self.top_p).any()):
            return None, token_ids
        return top.masked_fill(mass - top >= self.top_p, 0.0), token_ids


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    sampling: SamplingSettings,
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
                do_sample=False,  # sampling happens in NucleusSampler
                logits_processor=None if greedy else LogitsProcessorList(
                    [NucleusSampler(sampling.temperature, sampling.top_p)]),
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
