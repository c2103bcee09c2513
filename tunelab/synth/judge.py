"""LLM-as-judge: which of two answers is better, MT-Bench's judge setup. The evaluation scores a
variant's win rate against the base model with it; the preference stage's judge source pairs answers.

Every prompt is judged twice, once with the variant as assistant A and once as assistant B, so a
judge that favours a position cancels out. A verdict scores the variant 1 (win), 0.5 (tie) or 0
(loss); a prompt scores the mean of its two verdicts (0, 0.25, 0.5, 0.75 or 1) and the win rate is
the mean over prompts. The per-prompt scores are kept for bootstrap intervals and paired tests.

Backends:
- `openai`: any OpenAI-compatible server (a bigger model behind vLLM or llama.cpp) writes its
  judgement as MT-Bench asks, an explanation then "[[A]]", "[[B]]" or "[[C]]"; the last one counts.
- `local`: a transformers model directory (default the pipeline's base model). It is not asked to
  write anything: the verdict is read off the next-token probabilities after "[[" (see LocalJudge).
"""

from __future__ import annotations

import gc
import os
import re
from dataclasses import dataclass, field
from statistics import mean
from typing import Any, Literal

from tqdm.auto import tqdm

from tunelab.core.config import ConfigError, check_range

# MT-Bench's "pair-v2" judge prompt, verbatim, from lm-sys/FastChat
# fastchat/llm_judge/data/judge_prompts.jsonl (commit 0e6e7fdc78bf64aceea1508694ce4e6472810b8b).
JUDGE_SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. You should choose the assistant that follows the user's instructions "
    "and answers the user's question better. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation by "
    "comparing the two responses and provide a short explanation. Avoid any positional biases and ensure that the "
    "order in which the responses were presented does not influence your decision. Do not allow the length of the "
    "responses to influence your evaluation. Do not favor certain names of the assistants. Be as objective as "
    "possible. After providing your explanation, output your final verdict by strictly following this format: "
    '"[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
JUDGE_PROMPT_TEMPLATE = (
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
VERDICTS = ("A", "B", "C")  # C is MT-Bench's tie
# FastChat takes the first of [[A]], [[B]], [[C]] found in that priority order; the last one written is
# the judge's final word when its explanation quotes the format or changes its mind.
VERDICT_PATTERN = re.compile(r"\[\[([ABC])\]\]")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TRUNCATION_MARK = " [...]"  # tells the judge the cut is ours, not an answer that stopped mid-sentence


@dataclass
class JudgeSettings:
    enabled: bool = True  # false skips judging (an openai judge needs its server up)
    backend: Literal["local", "openai"] = "local"
    model: str = "models/base"  # local: a model directory; openai: the served model's name
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8080/v1
    api_key_env: str | None = None  # openai: name of the environment variable holding the key, never the key
    max_answer_chars: int = 2000  # each answer is cut here so a judge prompt fits the judge's context
    batch_size: int = 8  # local: judge prompts per forward pass
    max_new_tokens: int = 1024  # openai: room for MT-Bench's explanation before the verdict
    concurrency: int = 4  # openai: requests in flight at once
    # which variants are judged against base; each costs two judge passes over every held-out prompt
    variants: list[str] = field(default_factory=lambda: ["sft", "aligned", "int8", "pruned"])

    def __post_init__(self) -> None:
        if self.backend not in ("local", "openai"):
            raise ConfigError(f"evaluate.judge.backend: '{self.backend}' is not allowed (allowed: local, openai)")
        if not self.model:
            raise ConfigError("evaluate.judge.model: empty (a model directory for local, "
                              "a served model name for openai)")
        if self.backend == "openai" and not self.base_url:
            raise ConfigError("evaluate.judge.base_url: the openai backend needs it (e.g. http://127.0.0.1:8080/v1)")
        if self.backend == "local":  # a knob that would be silently ignored is a mistake in params
            for name in ("base_url", "api_key_env"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"evaluate.judge.{name}: only the openai backend uses it (set null)")
        if self.api_key_env is not None and not ENV_NAME.fullmatch(self.api_key_env):
            # Never echo the value: what failed here is most likely a pasted key.
            raise ConfigError("evaluate.judge.api_key_env: must be the NAME of an environment variable "
                              "(letters, digits, _), not the key itself")
        check_range("evaluate.judge.max_answer_chars", self.max_answer_chars, 1)
        check_range("evaluate.judge.batch_size", self.batch_size, 1)
        check_range("evaluate.judge.max_new_tokens", self.max_new_tokens, 1)
        check_range("evaluate.judge.concurrency", self.concurrency, 1)
        unknown = sorted(set(self.variants) - {"sft", "aligned", "int8", "pruned"})
        if unknown:
            raise ConfigError(f"evaluate.judge.variants: '{unknown[0]}' is not a variant judged against base "
                              "(allowed: sft, aligned, int8, pruned)")

    def describe(self) -> str:
        """The judge as the report names it (never the key)."""
        if self.backend == "local":
            return f"local: {self.model} (next-token verdict)"
        return f"openai: {self.model} at {self.base_url}"


def parse_verdict(judgement: str) -> str | None:
    """The last "[[A]]", "[[B]]" or "[[C]]" in a judge's text, or None when it wrote none."""
    found = VERDICT_PATTERN.findall(judgement)
    return found[-1] if found else None


def variant_score(verdict: str | None, variant_is_a: bool) -> float:
    """1 when the judge picked the variant, 0 when it picked the base, 0.5 for a tie or no verdict."""
    if verdict not in ("A", "B"):
        return 0.5
    return 1.0 if (verdict == "A") == variant_is_a else 0.0


def judge_messages(question: str, answer_a: str, answer_b: str, max_answer_chars: int) -> list[dict[str, str]]:
    def clip(answer: str) -> str:
        return answer if len(answer) <= max_answer_chars else answer[:max_answer_chars] + TRUNCATION_MARK

    user = JUDGE_PROMPT_TEMPLATE.format(question=question, answer_a=clip(answer_a), answer_b=clip(answer_b))
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


@dataclass
class PairwiseResult:
    """One variant against the base: per prompt, the verdicts of both orders and the variant's score."""

    verdicts: list[tuple[str | None, str | None]]  # (variant as A, variant as B); None: no verdict written
    evidence: list[tuple[Any, Any]]  # per order: the judge's text (openai) or verdict probabilities (local)

    @property
    def scores(self) -> list[float]:
        # MT-Bench's conservative rule calls a pair a win only when both orders agree, else a tie; the
        # mean of the two agrees except that win + tie scores 0.75, not 0.5, and keeps the win rate
        # exactly the share of judgements won (ties half).
        return [(variant_score(first, True) + variant_score(second, False)) / 2 for first, second in self.verdicts]

    @property
    def win_rate(self) -> float:
        return mean(self.scores) if self.verdicts else 0.0

    def counts(self) -> dict[str, int]:
        """wins/ties/losses count judgements, two per prompt, unparseable ones among the ties, so
        win_rate == (wins + ties / 2) / judgements; inconsistent counts prompts whose orders disagree."""
        per_order = [(variant_score(a, True), variant_score(b, False)) for a, b in self.verdicts]
        flat = [score for pair in per_order for score in pair]
        return {
            "prompts": len(self.verdicts),
            "judgements": len(flat),
            "wins": flat.count(1.0),
            "ties": flat.count(0.5),
            "losses": flat.count(0.0),
            "inconsistent": sum(first != second for first, second in per_order),
            "unparseable": sum(v is None for pair in self.verdicts for v in pair),
        }

    def samples(self, questions: list[str]) -> list[dict[str, Any]]:
        return [
            {"prompt": q, "score": s, "verdict_variant_a": v[0], "verdict_variant_b": v[1], "evidence": list(e)}
            for q, s, v, e in zip(questions, self.scores, self.verdicts, self.evidence)
        ]


class Judge:
    """Builds both orders of every pair, asks the backend once per distinct judge prompt, scores."""

    def __init__(self, config: JudgeSettings):
        self.config = config

    def judge_pairs(self, questions: list[str], base_answers: list[str], variant_answers: list[str],
                description: str = "judge") -> PairwiseResult:
        if not len(questions) == len(base_answers) == len(variant_answers):
            raise ValueError(f"judge: {len(questions)} questions but {len(base_answers)} base and "
                             f"{len(variant_answers)} variant answers")
        conversations = []
        for question, base, variant in zip(questions, base_answers, variant_answers):
            conversations.append(judge_messages(question, variant, base, self.config.max_answer_chars))
            conversations.append(judge_messages(question, base, variant, self.config.max_answer_chars))
        # Identical answers give the same prompt in both orders; judging it once makes the two
        # verdicts equal, so the pair scores exactly 0.5, and saves the call.
        keys = [tuple(m["content"] for m in c) for c in conversations]
        distinct: dict[tuple, list[dict]] = {}
        for key, conversation in zip(keys, conversations):
            distinct.setdefault(key, conversation)
        judged = dict(zip(distinct, self._verdicts(list(distinct.values()), description)))
        per_order = [judged[key] for key in keys]
        pairs = list(zip(per_order[0::2], per_order[1::2]))
        return PairwiseResult(verdicts=[(a[0], b[0]) for a, b in pairs], evidence=[(a[1], b[1]) for a, b in pairs])

    def _verdicts(self, conversations: list[list[dict]], description: str) -> list[tuple[str | None, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        gc.collect()


class OpenAIJudge(Judge):
    """The judge writes its judgement through the repo's openai teacher (retries, concurrency, no key in logs)."""

    def __init__(self, config: JudgeSettings):
        from tunelab.synth.teachers import OpenAITeacher, TeacherSpec

        super().__init__(config)
        if config.api_key_env and not os.environ.get(config.api_key_env):
            raise ConfigError(f"evaluate.judge.api_key_env: environment variable {config.api_key_env} is not set "
                              "(export it with the judge server's API key)")
        self.teacher = OpenAITeacher(TeacherSpec(
            name="judge", backend="openai", model=config.model, base_url=config.base_url,
            api_key_env=config.api_key_env, concurrency=config.concurrency,
        ))

    def _verdicts(self, conversations, description):
        from tunelab.core.generation import SamplingSettings

        # Greedy like FastChat's judge (temperature 0); no repetition penalty on a judge's wording.
        sampling = SamplingSettings(max_new_tokens=self.config.max_new_tokens, temperature=0.0, top_p=1.0,
                                  repetition_penalty=1.0)
        answers = self.teacher.chat(conversations, sampling, seed=0, description=description)
        return [(parse_verdict(a.text), a.text) for a in answers]


def verdict_token_ids(tokenizer: Any, prompt: str) -> tuple[list[int], list[int]]:
    """The ids to feed after a templated prompt, and the three next-token ids that decide A, B or C.

    The prompt is tokenized followed by each full verdict "[[A]]", "[[B]]", "[[C]]" and split at the
    first token where they differ. With SmolLM2's tokenizer that is right after "[[" ("[[A]]" is
    "[[", "A", "]]"); a tokenizer that merges the letter into "[[" splits before it instead, and the
    comparison stays between the tokens the model would really write.
    """
    full = [tokenizer(f"{prompt}[[{v}]]", add_special_tokens=False)["input_ids"] for v in VERDICTS]
    split = 0
    while all(split < len(ids) for ids in full) and len({ids[split] for ids in full}) == 1:
        split += 1
    candidates = [ids[split] if split < len(ids) else None for ids in full]
    if None in candidates or len(set(candidates)) < len(VERDICTS):
        raise ValueError(f"judge: the tokenizer writes [[A]], [[B]] and [[C]] so that one next token cannot tell them "
                         f"apart (token ids {full[0][split:]}, {full[1][split:]}, {full[2][split:]})")
    return full[0][:split], candidates


class LocalJudge(Judge):
    """A local model judges by its next-token distribution after the assistant prefix "[[".

    Small models rarely write MT-Bench's explanation-then-verdict well, and generating it costs
    hundreds of tokens per judgement. Reading the probabilities of "A", "B" and "C" at the point where
    the verdict is due (the constrained-choice scoring used by multiple-choice harnesses) costs one
    forward pass and always yields a verdict; the argmax is the verdict, and the three probabilities
    are kept as evidence.
    """

    def __init__(self, config: JudgeSettings):
        from tunelab.core.models import load_tokenizer, load_variant

        super().__init__(config)
        self.tokenizer = load_tokenizer(config.model)  # left padding: the verdict position is the last one
        self.model = load_variant(config.model)

    def _template(self, conversation: list[dict]) -> str:
        from jinja2 import TemplateError

        try:
            return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        except TemplateError:
            # Some chat templates (Gemma's) refuse a system turn; the instructions then lead the user turn.
            merged = [{"role": "user", "content": conversation[0]["content"] + "\n\n" + conversation[1]["content"]}]
            return self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)

    def _verdicts(self, conversations, description):
        import torch

        inputs = [verdict_token_ids(self.tokenizer, self._template(c)) for c in conversations]
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i][0]))  # similar lengths pad little
        results: list[tuple[str | None, Any]] = [(None, None)] * len(inputs)
        progress = tqdm(total=len(inputs), desc=description, unit="judgement")
        for start in range(0, len(order), self.config.batch_size):
            batch = order[start : start + self.config.batch_size]
            encoded = self.tokenizer.pad({"input_ids": [inputs[i][0] for i in batch]}, padding=True,
                                         return_tensors="pt").to(self.model.device)
            # Positions count real tokens only, so a prompt scores the same whatever it is padded to.
            positions = (encoded["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(**encoded, position_ids=positions, logits_to_keep=1).logits[:, -1].float()
            log_probs = torch.log_softmax(logits, dim=-1)
            for row, i in enumerate(batch):
                chosen = log_probs[row, inputs[i][1]]
                probs = torch.softmax(chosen, dim=-1).tolist()  # renormalised over the three verdicts
                # An exact tie between letters is the judge's indifference: C.
                best = max(range(len(VERDICTS)), key=lambda k: (chosen[k].item(), VERDICTS[k] == "C"))
                results[i] = (VERDICTS[best], {v: round(p, 6) for v, p in zip(VERDICTS, probs)})
            progress.update(len(batch))
        progress.close()
        return results

    def close(self) -> None:
        del self.model
        super().close()


def check_ready(config: JudgeSettings) -> None:
    """Fail before the evaluation, not hours into it: an openai judge needs its key set and its server up."""
    if config.enabled and config.backend == "openai":
        OpenAIJudge(config).teacher.check_reachable()


def open_judge(config: JudgeSettings) -> Judge:
    return {"local": LocalJudge, "openai": OpenAIJudge}[config.backend](config)
