"""Preference pairs for prompts no program can check: a reward model's scores or a judge's verdicts.

Both sources draw `count` instructions from the curated SFT data (its users' requests: open
questions, explanations, code tasks) and sample `samples_per_prompt` answers to each from the SFT
model, resumable chunk by chunk as the verifiable answers are. Then:

- reward_model (the Synthetic Instruction Tuner write-up, ../shared/SEEDS.md): a reward model
  (tunelab.train.rewardmodel.RewardModel: any sequence classifier of one output, local or hub)
  scores every answer, the SFT model's and those of any `teachers` (the seed scored three models'
  answers); the best against the worst, when the reward margin is at least `min_margin`.
- judge (the Alpaca write-up's LLM judge; UltraFeedback's idea): the first two distinct answers
  go to the judge of tunelab.synth.judge (local or OpenAI-compatible) in both orders; a pair is
  kept only when both orders pick the same answer, so ties and position-swayed verdicts drop out.

Rows are TRL conversational preference rows with `source`, the scores and the evidence.
ScoredSources is what the preference stage calls: both sources checked before any model loads, then
sampled and paired.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal

from tunelab.core.config import ConfigError, check_range
from tunelab.core.generation import GenerationStats, SamplingSettings, chat_prompt, generate_texts
from tunelab.core.io import read_jsonl
from tunelab.core.resumable import Shard, directory_digest, fill, fingerprint
from tunelab.synth.judge import JudgeSettings, check_ready, open_judge
from tunelab.synth.teachers import OpenAITeacher, TeacherSpec, describe, open_teacher
from tunelab.train.rewardmodel import RewardModel

ANSWER_SAMPLING = dict(max_new_tokens=128, temperature=0.9, top_p=0.95, repetition_penalty=1.1, batch_size=32)
SEED_OFFSETS = {"reward_model": 60_000, "judge": 70_000}  # apart from the other sources' chunk seeds
_CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]  # in every resume key: new code, new answers


def check_sampled_source(where: str, source: Any, least_samples: int = 2) -> None:
    """What both sources sample: count prompts, least_samples SFT answers each or more, in chunks of
    checkpoint_every."""
    check_range(f"{where}.count", source.count, 0)
    check_range(f"{where}.samples_per_prompt", source.samples_per_prompt, least_samples)
    check_range(f"{where}.checkpoint_every", source.checkpoint_every, 1)


@dataclass
class RewardModelPairSettings:
    """preference.sources.reward_model: K answers per prompt scored by a reward model, best over worst."""

    count: int = 0  # SFT instructions to pair (0 = off)
    model: str | None = None  # a one-output sequence classifier: local dir (a reward stage's models/reward) or hub id
    samples_per_prompt: int = 4  # the SFT model's answers per prompt (0 with teachers: theirs alone)
    # More writers, as the seed scored three models' answers: generate's teacher entries (local or
    # any OpenAI-compatible server), each writing samples_per_teacher answers per prompt
    teachers: list[TeacherSpec] = field(default_factory=list)
    samples_per_teacher: int = 1
    min_margin: float = 0.5  # best reward minus worst, at least (the reward model's own units)
    sampling: SamplingSettings = field(default_factory=lambda: SamplingSettings(**ANSWER_SAMPLING))
    batch_size: int = 8  # answers scored per forward pass
    seed: int = 0  # which instructions are drawn
    checkpoint_every: int = 16  # prompts per resumable chunk

    def __post_init__(self) -> None:
        where = "preference.sources.reward_model"
        check_sampled_source(where, self, least_samples=0)  # teachers may write every answer
        check_range(f"{where}.samples_per_teacher", self.samples_per_teacher, 1)
        check_range(f"{where}.batch_size", self.batch_size, 1)
        names = [teacher.name for teacher in self.teachers]
        if len(set(names)) < len(names) or "sft" in names:
            raise ConfigError(f"{where}.teachers: names must be unique and not 'sft' (the SFT model's), got {names}")
        if self.candidates < 2:
            raise ConfigError(f"{where}: {self.candidates} answer(s) per prompt; best against worst needs at least 2 "
                              "(raise samples_per_prompt, or add teachers)")
        if self.count and not self.model:
            raise ConfigError(f"{where}.model: set a reward model (a local directory such as a reward stage's "
                              "models/reward, or a hub id) or set count: 0")

    @property
    def candidates(self) -> int:
        """Answers scored per prompt: the SFT model's and every teacher's."""
        return self.samples_per_prompt + len(self.teachers) * self.samples_per_teacher


@dataclass
class JudgePairSettings:
    """preference.sources.judge: two answers per prompt, judged in both orders; agreed verdicts pair."""

    count: int = 0  # SFT instructions to pair (0 = off)
    backend: Literal["local", "openai"] = "local"  # as evaluate.judge
    model: str = "models/base"  # local: a model directory; openai: the served model's name
    base_url: str | None = None  # openai only
    api_key_env: str | None = None  # openai only: the NAME of the environment variable holding the key
    max_answer_chars: int = 2000
    batch_size: int = 8  # local: judge prompts per forward pass
    max_new_tokens: int = 1024  # openai: room for the explanation before the verdict
    concurrency: int = 4  # openai: requests in flight
    samples_per_prompt: int = 2  # answers sampled; the first two that differ are judged
    sampling: SamplingSettings = field(default_factory=lambda: SamplingSettings(**ANSWER_SAMPLING))
    seed: int = 0  # which instructions are drawn
    checkpoint_every: int = 16  # prompts per resumable chunk

    def __post_init__(self) -> None:
        where = "preference.sources.judge"
        check_sampled_source(where, self)
        try:
            self.judge_settings()
        except ConfigError as err:
            raise ConfigError(str(err).replace("evaluate.judge", where)) from None

    def judge_settings(self) -> JudgeSettings:
        shared = {f.name for f in fields(JudgeSettings)} & {f.name for f in fields(self)}
        return JudgeSettings(enabled=True, variants=[], **{name: getattr(self, name) for name in shared
                                                           if name not in ("enabled", "variants")})


def sft_instructions(sft_data: Path | None, count: int, seed: int, where: str) -> list[str]:
    """`count` distinct first user requests of the curated SFT training rows, drawn with `seed`."""
    path = Path(sft_data or "") / "train.jsonl"
    if sft_data is None or not path.is_file():
        raise FileNotFoundError(f"{where}: draws its prompts from the curated SFT data, and {path} is missing "
                                "(pass --sft-data data/curated; dvc repro curate)")
    requests = []
    for row in read_jsonl(path):
        first = next((turn["content"] for turn in row.get("messages", []) if turn.get("role") == "user"), None)
        if first and first not in requests:
            requests.append(first)
    if len(requests) < count:
        raise ValueError(f"{where}.count: {count} prompts asked for, but {path} holds {len(requests)} distinct "
                         f"requests; lower {where}.count")
    return random.Random(seed).sample(requests, count)


def sample_open_answers(model: Any, tokenizer: Any, prompts: list[str], k: int, sampling: SamplingSettings,
                        sampling_seed: int, checkpoint_every: int, work_dir: Path, name: str,
                        model_dirs: list[Path]) -> tuple[list[list[str]], Shard]:
    """K SFT answers per prompt, resumable chunk by chunk, each chunk seeded by its index alone."""
    stats = GenerationStats()

    def write(chosen: list[str], seed: int, description: str) -> list[str]:
        return generate_texts(model, tokenizer, [chat_prompt(tokenizer, p) for p in chosen for _ in range(k)],
                              sampling, seed, description=description, stats=stats)

    key = fingerprint(_CODE, asdict(sampling), k, sampling_seed, prompts, directory_digest(*model_dirs))
    return _sampled(prompts, k, checkpoint_every, Shard(work_dir, f"{name}-answers", key), write,
                    sampling_seed * 100_003 + SEED_OFFSETS[name], f"{name} answers")


def sample_teacher_answers(spec: TeacherSpec, index: int, prompts: list[str], k: int, sampling: SamplingSettings,
                           sampling_seed: int, checkpoint_every: int, work_dir: Path) -> tuple[list[list[str]], Shard]:
    """K answers per prompt from one teacher (the reward_model source's `index`-th), resumable as the
    SFT model's are; the teacher is opened only when a chunk is missing, and closed after."""
    opened: list[Any] = []

    def write(chosen: list[str], seed: int, description: str) -> list[str]:
        if not opened:
            opened.append(open_teacher(spec))
        conversations = [[{"role": "user", "content": p}] for p in chosen for _ in range(k)]
        return [answer.text for answer in opened[0].chat(conversations, sampling, seed, description)]

    local = Path(spec.model)
    key = fingerprint(_CODE, asdict(sampling), k, sampling_seed, prompts, describe(spec),
                      directory_digest(local) if spec.backend != "openai" and local.is_dir() else None)
    try:
        return _sampled(prompts, k, checkpoint_every, Shard(work_dir, f"reward_model-{spec.name}-answers", key), write,
                        sampling_seed * 100_003 + SEED_OFFSETS["reward_model"] + 1_000 * (index + 1),
                        f"reward_model answers, teacher {spec.name}")
    finally:
        for teacher in opened:
            teacher.close()


def _sampled(prompts: list[str], k: int, checkpoint_every: int, shard: Shard,
             write: Callable[[list[str], int, str], list[str]], seed: int, what: str) -> tuple[list[list[str]], Shard]:
    """`write(prompts, seed, description)`'s K answers per prompt, a shard chunk at a time; each chunk's
    seed is `seed` plus its index, so a resumed run redoes a chunk as it would have been."""
    chunks = math.ceil(len(prompts) / checkpoint_every)

    def make_chunk(index: int, done: list[dict], missing: int) -> list[dict]:
        chosen = prompts[len(done): len(done) + min(checkpoint_every, missing)]
        flat = write(chosen, seed + index, f"{what}, chunk {index + 1}/{chunks}")
        return [{"key": p, "answers": flat[i * k:(i + 1) * k]} for i, p in enumerate(chosen)]

    sampled = fill(shard, len(prompts), make_chunk, chunks, what)
    if [row["key"] for row in sampled] != prompts:
        raise RuntimeError(f"{shard.directory} does not match the prompts; delete it and re-run")
    return [row["answers"] for row in sampled], shard


def conversation(prompt: str, answer: str) -> tuple[list[dict], list[dict]]:
    return [{"role": "user", "content": prompt}], [{"role": "assistant", "content": answer}]


def reward_model_pairs(prompts: list[str], answers: list[list[str]], scorer: Any, settings: RewardModelPairSettings,
                       writers: list[list[str]] | None = None) -> tuple[list[dict], dict[str, Any]]:
    """Best against worst of each prompt's answers by reward, where the margin is at least min_margin.
    `writers` names who wrote each answer (the SFT model, a teacher); the pairs and report keep it."""
    writers = writers or [["sft"] * len(candidates) for candidates in answers]
    flat = [(prompt, answer) for prompt, candidates in zip(prompts, answers) for answer in candidates]
    turns = [conversation(prompt, answer) for prompt, answer in flat]
    rewards = scorer.score([t[0] for t in turns], [t[1] for t in turns])
    pairs, dropped, at = [], {"tie": 0, "small_margin": 0}, 0
    wins = {"chosen": Counter(), "rejected": Counter()}
    for index, (prompt, candidates, written_by) in enumerate(zip(prompts, answers, writers)):
        scored = sorted(zip(rewards[at: at + len(candidates)], candidates, written_by), key=lambda s: -s[0])
        at += len(candidates)
        (best_reward, best, best_writer), (worst_reward, worst, worst_writer) = scored[0], scored[-1]
        if best.strip() == worst.strip():
            dropped["tie"] += 1
            continue
        if best_reward - worst_reward < settings.min_margin:
            dropped["small_margin"] += 1
            continue
        wins["chosen"][best_writer] += 1
        wins["rejected"][worst_writer] += 1
        user, chosen = conversation(prompt, best)
        pairs.append({"prompt": user, "chosen": chosen, "rejected": conversation(prompt, worst)[1],
                      "score_chosen": round(best_reward, 6), "score_rejected": round(worst_reward, 6),
                      "source": f"reward_model/{Path(scorer.name).name}", "key": f"reward_model-{index}",
                      "chosen_writer": best_writer, "rejected_writer": worst_writer,
                      "rewards": [round(r, 6) for r, _, _ in scored], "writers": [w for _, _, w in scored]})
    margins = [p["score_chosen"] - p["score_rejected"] for p in pairs]
    return pairs, {"prompts": len(prompts), "pairs": len(pairs), "model": scorer.name, "model_digest": scorer.digest,
                   **{f"dropped_{why}": n for why, n in dropped.items()},
                   "writers": sorted({w for row in writers for w in row}),
                   "pairs_by_writer": {side: dict(sorted(counts.items())) for side, counts in wins.items()},
                   "margin_mean": sum(margins) / len(margins) if margins else None,
                   "reward_mean": sum(rewards) / len(rewards) if rewards else None}


def judge_pairs(prompts: list[str], answers: list[list[str]], judge: Any,
                settings: JudgePairSettings) -> tuple[list[dict], dict[str, Any]]:
    """Each prompt's first two distinct answers, judged in both orders; kept when both orders agree."""
    compared = []
    for index, (prompt, candidates) in enumerate(zip(prompts, answers)):
        distinct = list(dict.fromkeys(a for a in candidates if a.strip()))
        if len(distinct) >= 2:
            compared.append((index, prompt, distinct[0], distinct[1]))
    # PairwiseResult scores the second answer ("variant") against the first ("base"): 1 both orders
    # prefer it, 0 both prefer the first, anything between is a tie or a disagreement.
    result = judge.judge_pairs([c[1] for c in compared], [c[2] for c in compared], [c[3] for c in compared],
                               description="judge pairs")
    pairs, dropped = [], {"identical_answers": len(prompts) - len(compared), "tie_or_disagreement": 0}
    outcomes = zip(compared, result.scores, result.verdicts, result.evidence)
    for (index, prompt, first, second), score, verdicts, evidence in outcomes:
        if score not in (0.0, 1.0):
            dropped["tie_or_disagreement"] += 1
            continue
        chosen, rejected = (second, first) if score == 1.0 else (first, second)
        user, chosen_turns = conversation(prompt, chosen)
        pairs.append({"prompt": user, "chosen": chosen_turns, "rejected": conversation(prompt, rejected)[1],
                      "score_chosen": 1.0, "score_rejected": 0.0, "source": f"judge/{settings.backend}",
                      "key": f"judge-{index}",
                      "verdicts": {"second_as_a": verdicts[0], "second_as_b": verdicts[1]},
                      "evidence": [e if isinstance(e, dict) else str(e)[-500:] for e in evidence]})
    return pairs, {"prompts": len(prompts), "judged": len(compared), "pairs": len(pairs),
                   "judge": settings.judge_settings().describe(),
                   **{f"dropped_{why}": n for why, n in dropped.items()}}


class ScoredSources:
    """The reward_model and judge sources of one preference run. Made before any model loads, so
    their inputs stop the stage early: instructions to draw, a reward model that is a one-output
    sequence classifier, a judge server and teacher servers that answer."""

    def __init__(self, sources: Any, sft_data: Path | None):
        self.settings = {name: getattr(sources, name) for name in ("reward_model", "judge")
                         if getattr(sources, name).count}
        self.prompts = {name: sft_instructions(sft_data, source.count, source.seed, f"preference.sources.{name}")
                        for name, source in self.settings.items()}
        reward_model = self.settings.get("reward_model")
        self.scorer = RewardModel(reward_model.model, reward_model.batch_size,
                                  "preference.sources.reward_model.model") if reward_model else None
        for spec in reward_model.teachers if reward_model else []:
            if spec.backend == "openai":
                OpenAITeacher(spec).check_reachable()
        if "judge" in self.settings:
            check_ready(self.settings["judge"].judge_settings())

    def pairs(self, model: Any, tokenizer: Any, sampling_seed: int, work_dir: Path,
              model_dirs: list[Path]) -> tuple[list[dict], dict[str, Any], list[Shard]]:
        """Each source's answers sampled (resumable) and paired: its rows, its report, its shards."""
        pairs, report, shards = [], {}, []
        for name, source in self.settings.items():
            prompts = self.prompts[name]
            answers, writers = [[] for _ in prompts], [[] for _ in prompts]
            sampled = []  # (writer, its answers per prompt, its shard)
            if source.samples_per_prompt:
                sampled.append(("sft", *sample_open_answers(model, tokenizer, prompts, source.samples_per_prompt,
                                                            source.sampling, sampling_seed, source.checkpoint_every,
                                                            work_dir, name, model_dirs)))
            for index, spec in enumerate(getattr(source, "teachers", [])):  # the judge source has none
                sampled.append((spec.name, *sample_teacher_answers(spec, index, prompts, source.samples_per_teacher,
                                                                   source.sampling, sampling_seed,
                                                                   source.checkpoint_every, work_dir)))
            for writer, written, shard in sampled:
                shards.append(shard)
                for mine, who, new in zip(answers, writers, written):
                    mine.extend(new)
                    who.extend([writer] * len(new))
            if name == "reward_model":
                scored, report[name] = reward_model_pairs(prompts, answers, self.scorer, source, writers)
                self.scorer.close()
            else:
                judge = open_judge(source.judge_settings())
                scored, report[name] = judge_pairs(prompts, answers, judge, source)
                judge.close()
            pairs += scored
        return pairs, report, shards
