"""Verifiable rewards for online RL (GRPO, RLOO): named functions TRL's trainers call on each
step's completions, weighted and summed by the trainer.

Each function takes TRL's reward-function arguments (`prompts`, `completions`, `completion_ids` and
the prompt rows' own columns) and returns one reward per completion, or None where it does not
apply (a code reward on an instruction prompt): TRL then leaves that function out of that
completion's sum, so one run can mix instruction and code prompts.

- `instructions`: the fraction of the prompt's IFEval instructions the answer follows, through
  the checkers evaluation and the preference stage use (`tunelab.tasks.instructions`).
- `code_correct`: 1 when the answer's code passes the problem's tests in the sandbox, else 0 (a
  forged, crashing or hanging program earns 0); a step's completions are checked in parallel.
- `code_efficiency`: for passing code, the reference solution's kernel CPU time over the
  answer's on the same tests (`codequality.runtime_ratio`), capped at 1; 0 for failing code.
- `code_style`: for passing code, 1 / (1 + PEP 8 findings).

Every reward passes through the guard first: an answer cut at the completion limit (no end of
turn) or shorter than `min_words` words earns 0 from every function. Without it the policy learns
that an empty or cut-off answer satisfies "no commas", "all lowercase" or "at most N words".
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Literal

from tunelab.core.config import ConfigError, check_range

Reward = Callable[..., list[float | None]]
KINDS = ("instructions", "code_correct", "code_efficiency", "code_style")


@dataclass
class RewardSettings:
    # Weights of each reward in the sum TRL's advantage is computed on; 0 leaves a function out.
    instructions: float = 1.0
    code_correct: float = 1.0
    code_efficiency: float = 0.0  # a passing answer is timed against the reference: about 1 s of sandbox CPU each
    code_style: float = 0.0
    instruction_level: Literal["strict", "loose"] = "loose"  # which IFEval verdict counts (evaluation reports both)
    min_words: int = 3  # the guard: shorter answers earn 0 from every function
    reward_truncated: bool = False  # the guard: an answer cut at the completion limit earns 0 unless true
    sandbox_timeout_s: float = 5.0
    sandbox_memory_mb: int = 1024
    sandbox_workers: int = 2  # completions checked at once

    def __post_init__(self) -> None:
        for kind in KINDS:
            check_range(kind, getattr(self, kind), 0.0)
        if not any(getattr(self, kind) for kind in KINDS):
            raise ConfigError("instructions: 0, and so is every other reward weight (code_correct, code_efficiency, "
                              "code_style); give at least one reward a weight above 0")
        if self.instruction_level not in ("strict", "loose"):
            raise ConfigError(f"instruction_level: '{self.instruction_level}' is not allowed (allowed: strict, loose)")
        check_range("min_words", self.min_words, 0)
        check_range("sandbox_workers", self.sandbox_workers, 1)


def completion_text(completion: Any) -> str:
    """TRL hands conversational completions as [{'role': 'assistant', 'content': ...}], plain ones as text."""
    if isinstance(completion, list):
        return "".join(message.get("content") or "" for message in completion)
    return completion


class RewardLog:
    """Every reward of the first and the latest generation step, per completion, for the report (a
    resumed run's first step is the one it resumed at)."""

    def __init__(self) -> None:
        self.first: dict[str, Any] | None = None
        self.latest: dict[str, Any] | None = None
        self.guarded = 0  # completions the guard zeroed, over the run

    def record(self, name: str, step: int, prompts: list[Any], completions: list[Any], rewards: list[float | None],
               ) -> None:
        if self.latest is None or self.latest["step"] != step:
            self.latest = {"step": step, "rows": [
                {"prompt": completion_text(p[-1:] if isinstance(p, list) else p), "completion": completion_text(c),
                 "rewards": {}} for p, c in zip(prompts, completions)]}
            if self.first is None:
                self.first = self.latest
        for row, reward in zip(self.latest["rows"], rewards):
            row["rewards"][name] = reward

    def samples(self, per_step: int = 4) -> dict[str, Any]:
        pick = lambda record: None if record is None else {"step": record["step"], "rows": record["rows"][:per_step]}
        return {"first": pick(self.first), "last": pick(self.latest), "guarded_completions": self.guarded}


def guard_failures(texts: list[str], completion_ids: list[list[int]] | None, end_ids: set[int],
                   settings: RewardSettings) -> list[bool]:
    """True for each completion the guard zeroes: too short, or cut at the limit (no end of turn)."""
    failures = []
    for index, text in enumerate(texts):
        short = len(text.split()) < settings.min_words
        cut = (not settings.reward_truncated and completion_ids is not None
               and (not completion_ids[index] or completion_ids[index][-1] not in end_ids))
        failures.append(short or cut)
    return failures


def instruction_rewards(texts: list[str], checks: list[str | None], level: str) -> list[float | None]:
    """Fraction of each prompt's instructions followed; None for prompts without instructions."""
    from tunelab.tasks.instructions import score_response

    rewards: list[float | None] = []
    for text, check in zip(texts, checks):
        if not check:
            rewards.append(None)
            continue
        rewards.append(score_response(json.loads(check), text)[f"fraction_{level}"])
    return rewards


class SandboxVerdicts:
    """Whether each completion's code passes its problem's tests, run once per completion and step:
    every code reward needs that verdict, and each sandbox run starts a process."""

    def __init__(self, settings: RewardSettings) -> None:
        self.settings = settings
        self.step: int | None = None
        self.passed: dict[tuple[str, str], bool] = {}

    def __call__(self, problem: dict[str, Any], text: str, step: int) -> bool:
        from tunelab.tasks.codeproblems import verify

        if step != self.step:  # a new step's completions: the last step's verdicts are not needed again
            self.step, self.passed = step, {}
        key = (problem["task_id"], text)
        if key not in self.passed:
            self.passed[key] = verify(problem, text, self.settings.sandbox_timeout_s,
                                      self.settings.sandbox_memory_mb)["passed"]
        return self.passed[key]


def _code_reward(kind: str, problem: dict[str, Any], text: str, passed: bool, settings: RewardSettings) -> float:
    from tunelab.tasks.codeproblems import extract_code, runnable_completion
    from tunelab.tasks.codequality import lint_findings, runtime_ratio

    if not passed:
        return 0.0
    if kind == "code_correct":
        return 1.0
    code = extract_code(text)
    if kind == "code_style":
        return 1.0 / (1 + lint_findings(code)["count"])
    measured = runtime_ratio(problem, runnable_completion(problem, code), repeats=3,
                             timeout=settings.sandbox_timeout_s, memory_mb=settings.sandbox_memory_mb)
    return min(1.0, 1.0 / measured["ratio"]) if measured["ratio"] else 0.0


def code_rewards(kind: str, texts: list[str], task_ids: list[str | None], problems: dict[str, dict[str, Any]],
                 settings: RewardSettings, verdicts: SandboxVerdicts | None = None, step: int = 0,
                 ) -> list[float | None]:
    """`kind` of each completion's code, `sandbox_workers` at a time; None for prompts without a problem."""
    verdicts = verdicts or SandboxVerdicts(settings)

    def one(item: tuple[str, str | None]) -> float | None:
        text, task_id = item
        if not task_id:
            return None
        problem = problems[task_id]
        return _code_reward(kind, problem, text, verdicts(problem, text, step), settings)

    with ThreadPoolExecutor(max_workers=settings.sandbox_workers) as pool:
        return list(pool.map(one, zip(texts, task_ids)))


def build_rewards(settings: RewardSettings, problems: dict[str, dict[str, Any]], end_ids: set[int],
                  log: RewardLog | None = None) -> tuple[list[Reward], list[float]]:
    """The reward functions with a weight above 0, in KINDS order, and their weights (GRPOConfig.reward_weights).
    Each is named after its kind: TRL logs rewards/<name>/mean and /std per step."""
    functions, weights = [], []
    active = [kind for kind in KINDS if getattr(settings, kind)]
    verdicts = SandboxVerdicts(settings)  # shared: the code rewards of one completion run its code once
    for kind in active:
        weight = getattr(settings, kind)

        def reward(prompts: list[Any], completions: list[Any], completion_ids: list[list[int]] | None = None,
                   checks: list[str | None] | None = None, task_id: list[str | None] | None = None,
                   trainer_state: Any = None, _kind: str = kind, **_: Any) -> list[float | None]:
            texts = [completion_text(c) for c in completions]
            step = trainer_state.global_step if trainer_state is not None else 0
            if _kind == "instructions":
                scores = instruction_rewards(texts, checks or [None] * len(texts), settings.instruction_level)
            else:
                scores = code_rewards(_kind, texts, task_id or [None] * len(texts), problems, settings, verdicts, step)
            failures = guard_failures(texts, completion_ids, end_ids, settings)
            scores = [0.0 if failed and score is not None else score for score, failed in zip(scores, failures)]
            if log is not None:
                if _kind == active[0]:  # every function sees the same completions: count them once
                    log.guarded += sum(failures)
                log.record(_kind, step, prompts, completions, scores)
            return scores

        reward.__name__ = kind
        functions.append(reward)
        weights.append(weight)
    return functions, weights


def rl_rows(instruction_rows: list[dict[str, Any]], problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prompt rows for TRL: a chat prompt and the columns the rewards read. IFEval checks travel as
    JSON text: Arrow would merge every row's kwargs into one struct and fill the gaps with nulls."""
    from tunelab.tasks.codeproblems import user_message

    rows = [{"prompt": [{"role": "user", "content": row["prompt"]}],
             "checks": json.dumps({k: row[k] for k in ("key", "prompt", "instruction_id_list", "kwargs")}),
             "task_id": None} for row in instruction_rows]
    rows += [{"prompt": [{"role": "user", "content": user_message(problem)}], "checks": None,
              "task_id": problem["task_id"]} for problem in problems]
    return rows
