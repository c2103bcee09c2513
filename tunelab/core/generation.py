"""Batched transformers generation: left padding, length-sorted batches, seeded sampling.

Sampling runs in `NucleusSampler`, not in transformers' warpers: their top-p sorts the whole
vocabulary for every row at every step, a large share of the generate stage's time on a CPU
(the profile is in docs/performance.md); the nucleus is found among the most likely tokens instead.

The decoding loop is our own, not `model.generate`, for one reason: a row leaves the batch the
step it finishes (its KV cache rows dropped), where `generate` keeps computing every finished row
until the longest one ends. On a CPU a step's cost grows with its rows, so a batch whose answers
end at different lengths runs faster (`bench/evaluate_decoder.py` measures it against lm-eval's
and transformers' own loops; docs/performance.md). A stop condition can also be a predicate on
the text (`stop_when`), e.g. "the first code block is closed" for tasks that keep only that block.
Prompt-learning PEFT models, whose forward prepends virtual tokens, keep `model.generate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from tunelab.core.answers import CUT_AT_LENGTH, ENDED, Answer


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
    stop_when: Callable[[str], bool] | None = None,
) -> list[str]:
    """`generate_answers`' texts, for callers that do not ask why a row stopped."""
    answers = generate_answers(model, tokenizer, prompts, sampling, seed, description=description,
                               stop_strings=stop_strings, stats=stats, keep_special_tokens=keep_special_tokens,
                               stop_when=stop_when)
    return [answer.text for answer in answers]


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    sampling: SamplingSettings,
    seed: int,
    description: str = "generating",
    stop_strings: list[str] | None = None,
    stats: GenerationStats | None = None,
    keep_special_tokens: bool = False,
    stop_when: Callable[[str], bool] | None = None,
) -> list[Answer]:
    """Continue each already-templated prompt; returns the new text only and why it stopped, in input order.

    Prompts are sorted by length so each batch pads little; each batch gets its own seed
    derived from `seed` and its position, so results do not depend on what ran before.
    A row ends at the tokenizer's EOS, at `max_new_tokens`, once its text contains one of
    `stop_strings` (the text is returned uncut: callers cut where they need), or once
    `stop_when(text)` is true. `keep_special_tokens` leaves turn markers in the text for callers
    that cut at them.
    """
    if tokenizer.padding_side != "left":
        raise ValueError("batched generation needs a left-padding tokenizer")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[Answer] = [Answer("", ENDED)] * len(prompts)
    decode_batch = _generate_batch if _has_plain_forward(model) else _library_generate_batch
    ended = _stop_check(tokenizer, stop_strings, stop_when)
    progress = tqdm(total=len(prompts), desc=description, unit="seq")
    for start in range(0, len(order), sampling.batch_size):
        batch_ids = order[start : start + sampling.batch_size]
        encoded = tokenizer(
            [prompts[i] for i in batch_ids], return_tensors="pt", padding=True, add_special_tokens=False
        )
        torch.manual_seed(seed * 1_000_003 + start)
        began = time.perf_counter()
        with torch.inference_mode():
            new_tokens = decode_batch(model, tokenizer, encoded, sampling, ended, stop_strings)
        if stats is not None:
            stats.seconds += time.perf_counter() - began
            stats.new_tokens += sum(t != tokenizer.pad_token_id for tokens in new_tokens for t in tokens)
        for row, index in enumerate(batch_ids):
            outputs[index] = Answer(_decode(tokenizer, new_tokens[row], keep_special_tokens),
                                    _why_stopped(tokenizer, new_tokens[row], sampling, ended))
        progress.update(len(batch_ids))
    progress.close()
    return outputs


def _has_plain_forward(model: Any) -> bool:
    """False for prompt-learning PEFT models: their forward prepends virtual tokens at every call."""
    config = getattr(model, "active_peft_config", None)
    return not getattr(config, "is_prompt_learning", False)


def _why_stopped(tokenizer: Any, token_ids: list[int], sampling: SamplingSettings,
                 ended: Callable[[list[int]], bool] | None) -> str:
    """CUT_AT_LENGTH for a row that used every new token without reaching its end. Both decoding
    paths keep an EOS that ends a row except where the pad token is the EOS (generate's path drops
    padding), and then the row is shorter than max_new_tokens."""
    reached_end = bool(token_ids) and token_ids[-1] == tokenizer.eos_token_id
    if len(token_ids) < sampling.max_new_tokens or reached_end or (ended is not None and ended(token_ids)):
        return ENDED
    return CUT_AT_LENGTH


def _stop_check(tokenizer: Any, stop_strings: list[str] | None,
                stop_when: Callable[[str], bool] | None) -> Callable[[list[int]], bool] | None:
    """Whether a row's new tokens meet a text stop condition; None when there is none to check."""
    if not stop_strings and stop_when is None:
        return None

    def ended(token_ids: list[int]) -> bool:
        text = tokenizer.decode(token_ids, skip_special_tokens=False)
        return any(s in text for s in stop_strings or ()) or (stop_when is not None and stop_when(text))

    return ended


def _generate_batch(model: Any, tokenizer: Any, encoded: Any, sampling: SamplingSettings,
                    ended: Callable[[list[int]], bool] | None, stop_strings: list[str] | None) -> list[list[int]]:
    """Each row's new token ids (EOS included when it ended there); a finished row leaves the batch.

    The steps are `generate`'s greedy search: logits of the last position in fp32, the repetition
    penalty over the whole row (prompt and padding included), then the sampler, then argmax;
    positions count only real tokens, so left padding shifts nothing.
    """
    input_ids, mask = encoded["input_ids"], encoded["attention_mask"]
    processors = LogitsProcessorList()
    if sampling.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
    if sampling.temperature > 0:
        processors.append(NucleusSampler(sampling.temperature, sampling.top_p))
    new_tokens: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    live = list(range(input_ids.shape[0]))
    sequences = input_ids
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    output = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = output.past_key_values
    for _ in range(sampling.max_new_tokens):
        scores = processors(sequences, output.logits[:, -1, :].to(dtype=torch.float32))
        chosen = scores.argmax(dim=-1)
        keep = []
        for position, (row, token) in enumerate(zip(live, chosen.tolist())):
            new_tokens[row].append(token)
            done = (token == tokenizer.eos_token_id or len(new_tokens[row]) >= sampling.max_new_tokens
                    or (ended is not None and ended(new_tokens[row])))
            if not done:
                keep.append(position)
        if not keep:
            break
        sequences = torch.cat([sequences, chosen[:, None]], dim=-1)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        if len(keep) < len(live):
            kept = torch.tensor(keep)
            cache.batch_select_indices(kept)
            sequences, mask, chosen = sequences[kept], mask[kept], chosen[kept]
            live = [live[position] for position in keep]
        output = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                       past_key_values=cache, use_cache=True)
    return new_tokens


def _library_generate_batch(model: Any, tokenizer: Any, encoded: Any, sampling: SamplingSettings,
                            ended: Callable[[list[int]], bool] | None,
                            stop_strings: list[str] | None) -> list[list[int]]:
    """`model.generate` for models whose forward our loop cannot drive; finished rows keep computing.
    `generate` knows stop strings but not `stop_when`: such a row runs on, and its caller, which cuts
    the text anyway, sees the same text up to its stop."""
    greedy = sampling.temperature <= 0
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
    rows = generated[:, encoded["input_ids"].shape[1]:].tolist()
    return [[t for t in row if t != tokenizer.pad_token_id] for row in rows]


def _decode(tokenizer: Any, token_ids: list[int], keep_special_tokens: bool) -> str:
    if not keep_special_tokens:
        return tokenizer.decode(token_ids, skip_special_tokens=True)
    # generate's padding was dropped with the pad id; drop it here too, so both paths agree
    return tokenizer.decode([t for t in token_ids if t != tokenizer.pad_token_id], skip_special_tokens=False)


def chat_prompt(tokenizer: Any, user: str, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
