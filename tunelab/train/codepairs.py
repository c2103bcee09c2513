"""Code preference pairs from the sandbox: correct over failing, fast over slow, tidy over untidy.

The LeetCode model-answer write-up's idea (../shared/SEEDS.md): for the same problem, a correct
but inefficient solution is rejected against an optimised one, and among equally fast correct
solutions the more readable one wins. For each training problem (never a held-out one):

1. `samples_per_problem` solutions sampled from the SFT model run against the problem's tests in
   the sandbox.
2. The first rule that forms a pair from them:
   - correctness: a passing sample (chosen) against a failing one (rejected);
   - efficiency: two passing samples, the rejected one slower by at least `min_speed_ratio`;
   - readability: two passing samples of the same speed (neither `min_speed_ratio` slower), the
     chosen one with fewer PEP 8 findings (`codequality.lint_findings`).
3. Where the samples form no pair (the 135M default passes almost nothing), the problem's own
   reference solution (chosen) against its slow reference (rejected), both passing in the sandbox
   and the slow one measured at least `min_speed_ratio` slower: the seed paired its own solutions so.

Speed is `codequality.runtime_ratio`: the kernel's CPU time on the same tests, least of
`timing_repeats` alternating runs, the harness's own cost subtracted. Its noise is measured, not
assumed: the faster solution is then timed against itself the same way, and a solution counts as
slower only when its ratio clears `min_speed_ratio` times that self-ratio. Timings go to the
report, never into pairs.jsonl, so a re-run writes the same pairs unless a measured ratio crosses
the threshold (the report then shows it).

Held-out pairs (`heldout` problems) are drawn first, from problems the SFT data never saw, and
kept out of every training pair: the evaluate stage scores each variant's preference for the
efficient solution on them (`tunelab_codepairs`). Their labels are the problem set's design
(reference against slow reference, both verified to pass), not a timing.
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.core.config import ConfigError, check_range
from tunelab.core.generation import GenerationStats, SamplingSettings, chat_prompt, generate_texts
from tunelab.core.resumable import Shard, directory_digest, fill, fingerprint
from tunelab.sandbox.harness import check_completion
from tunelab.tasks.codeproblems import (
    ProblemSource,
    extract_code,
    runnable_completion,
    user_message,
)
from tunelab.tasks.codequality import lint_findings, runtime_ratio

SOURCE = "code"


@dataclass
class CodePairSettings:
    """preference.sources.code: pairs from code problems run in the sandbox."""

    count: int = 0  # training problems to pair (0 = off)
    heldout: int = 16  # problems kept out of every pair (and unseen by SFT) for the held-out code-pair accuracy
    problems: list[ProblemSource] = field(default_factory=lambda: [ProblemSource()])
    samples_per_problem: int = 2  # SFT solutions sampled per training problem (0 = reference pairs only)
    sampling: SamplingSettings = field(
        default_factory=lambda: SamplingSettings(max_new_tokens=256, temperature=0.8, top_p=0.95,
                                               repetition_penalty=1.0, batch_size=16)
    )
    min_speed_ratio: float = 1.5  # the rejected solution's CPU time over the chosen one's, at least
    timing_repeats: int = 5  # alternating timed runs of each solution; the least time of each counts
    # A timed run is calibrated to about 0.1 s of the faster solution's CPU time; one past this
    # limit is slower beyond measure (and counts as slower), so it need not run to the end.
    timing_timeout_s: float = 2.0
    sandbox_timeout_s: float = 10.0
    sandbox_memory_mb: int = 1024
    workers: int = 2  # sandbox runs at once
    seed: int = 0  # which problems are held out, and which train
    checkpoint_every: int = 8  # problems per resumable chunk of sampled solutions

    def __post_init__(self) -> None:
        for name in ("count", "heldout", "samples_per_problem"):
            check_range(f"preference.sources.code.{name}", getattr(self, name), 0)
        check_range("preference.sources.code.min_speed_ratio", self.min_speed_ratio, 1.0)
        check_range("preference.sources.code.timing_repeats", self.timing_repeats, 1)
        check_range("preference.sources.code.timing_timeout_s", self.timing_timeout_s, 0.5)
        check_range("preference.sources.code.checkpoint_every", self.checkpoint_every, 1)
        if (self.count or self.heldout) and not self.problems:
            raise ConfigError("preference.sources.code.problems: list at least one problem source, "
                              "or set count and heldout to 0")


def split_problems(problems: list[dict[str, Any]], seen_task_ids: set[str], heldout: int, count: int,
                   seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training problems, held-out problems). Held-out ones come from problems with a slow
    reference that the SFT data never saw; training ones from the rest, in a seeded order that
    does not depend on `count`, so raising it only adds problems."""
    for problem in problems:
        if not problem.get("test") or not problem.get("entry_point"):
            raise ValueError(f"preference.sources.code: problem {problem['task_id']} has no tests; every code "
                             "pair is verified in the sandbox, so drop it from the source or add its tests")
    order = sorted(problems, key=lambda p: p["task_id"])
    random.Random(seed).shuffle(order)
    can_hold_out = [p for p in order if p.get("slow_reference") and p["task_id"] not in seen_task_ids]
    if heldout > len(can_hold_out):
        raise ConfigError(f"preference.sources.code.heldout: {heldout} asked, but only {len(can_hold_out)} problems "
                          "have a slow reference and are not in the SFT data; lower it")
    held = can_hold_out[:heldout]
    held_ids = {p["task_id"] for p in held}
    rest = [p for p in order if p["task_id"] not in held_ids]
    if count > len(rest):
        raise ConfigError(f"preference.sources.code.count: {count} asked, but {len(rest)} problems are left "
                          f"after holding out {heldout}; lower count or heldout, or add a problem source")
    return rest[:count], sorted(held, key=lambda p: p["task_id"])


def code_answer(code: str) -> str:
    """A solution as an assistant answer: one Python code block, as the SFT code rows are."""
    return f"```python\n{code.strip()}\n```"


def passes(problem: dict[str, Any], code: str, settings: CodePairSettings) -> dict[str, Any]:
    verdict = check_completion(problem, runnable_completion(problem, code), settings.sandbox_timeout_s,
                               settings.sandbox_memory_mb)
    return {"passed": verdict["passed"], "status": verdict["status"]}


def measure_speed(problem: dict[str, Any], faster: str, slower: str, settings: CodePairSettings) -> dict[str, Any]:
    """How much slower `slower` runs than `faster` on the problem's tests, and the noise of that
    measurement: `faster` timed against itself with the same number of calls."""
    options = {"repeats": settings.timing_repeats, "timeout": settings.timing_timeout_s,
               "memory_mb": settings.sandbox_memory_mb}
    faster, slower = runnable_completion(problem, faster), runnable_completion(problem, slower)
    measured = runtime_ratio(problem, slower, reference=faster, **options)
    itself = runtime_ratio(problem, faster, reference=faster, check_calls=measured["check_calls"],
                           harness_s=measured["harness_cpu_s"], **options)
    noise = max(itself["ratio"], 1 / itself["ratio"])
    return {"ratio": measured["ratio"], "noise_ratio": round(noise, 4), "status": measured["status"],
            "check_calls": measured["check_calls"]}


def clearly_slower(speed: dict[str, Any], min_speed_ratio: float) -> bool:
    # A slower solution that times out under the calibrated calls is slower beyond measure.
    if speed["status"] == "timeout":
        return True
    return speed["ratio"] is not None and speed["ratio"] >= min_speed_ratio * speed["noise_ratio"]


def same_speed(speed: dict[str, Any], min_speed_ratio: float) -> bool:
    ratio = speed["ratio"]
    return ratio is not None and 1 / min_speed_ratio < ratio < min_speed_ratio


def _pair_row(problem: dict[str, Any], chosen: str, rejected: str, rule: str, origin: str,
              evidence: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": user_message(problem)}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        # The preference's strength as the rule sees it: pass/fail is certain; speed and style are ranked.
        "score_chosen": 1.0, "score_rejected": 0.0 if rule == "correctness" else 0.5,
        "source": f"{SOURCE}/{rule}-{origin}", "key": problem["task_id"],
        "evidence": {"rule": rule, "origin": origin, **evidence},
    }


def pair_from_samples(problem: dict[str, Any], answers: list[str], settings: CodePairSettings,
                      record: dict[str, Any]) -> dict[str, Any] | None:
    """The first pair the rules form from the SFT model's sampled answers, or None. `record`
    gains the number of answers that passed and every timing taken."""
    codes = [extract_code(answer) for answer in answers]
    verdicts = [passes(problem, code, settings) for code in codes]
    passing = [i for i, v in enumerate(verdicts) if v["passed"]]
    record["sampled_passed"] = len(passing)
    failing = [i for i, v in enumerate(verdicts) if not v["passed"]]
    if passing and failing:
        chosen, rejected = passing[0], failing[0]
        return _pair_row(problem, answers[chosen], answers[rejected], "correctness", "sampled",
                         {"chosen_status": "passed", "rejected_status": verdicts[rejected]["status"]})
    if len(passing) < 2:
        return None
    first, second = passing[0], passing[1]
    speed = measure_speed(problem, codes[first], codes[second], settings)
    if speed["ratio"] is not None and speed["ratio"] < 1:  # the second was faster: time it as the faster one
        first, second = second, first
        speed = measure_speed(problem, codes[first], codes[second], settings)
    record["timings"].append({"task_id": problem["task_id"], "origin": "sampled", **speed})
    if clearly_slower(speed, settings.min_speed_ratio):
        return _pair_row(problem, answers[first], answers[second], "efficiency", "sampled",
                         {"min_speed_ratio": settings.min_speed_ratio})
    if same_speed(speed, settings.min_speed_ratio):
        findings = [lint_findings(codes[i])["count"] for i in (first, second)]
        if findings[0] != findings[1]:
            tidy, untidy = (first, second) if findings[0] < findings[1] else (second, first)
            return _pair_row(problem, answers[tidy], answers[untidy], "readability", "sampled",
                             {"pep8_findings_chosen": min(findings), "pep8_findings_rejected": max(findings)})
    return None


def reference_pair(problem: dict[str, Any], settings: CodePairSettings,
                   record: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The problem's reference against its slow reference, or None and why not."""
    if not problem.get("reference") or not problem.get("slow_reference"):
        return None, "no slow reference"
    for name in ("reference", "slow_reference"):
        verdict = passes(problem, problem[name], settings)
        if not verdict["passed"]:
            return None, f"{name} {verdict['status']}"
    speed = measure_speed(problem, problem["reference"], problem["slow_reference"], settings)
    record["timings"].append({"task_id": problem["task_id"], "origin": "reference", **speed})
    if not clearly_slower(speed, settings.min_speed_ratio):
        return None, "slow reference not measurably slower"
    return _pair_row(problem, code_answer(problem["reference"]), code_answer(problem["slow_reference"]),
                     "efficiency", "reference", {"min_speed_ratio": settings.min_speed_ratio}), ""


def sample_solutions(model: Any, tokenizer: Any, problems: list[dict[str, Any]], settings: CodePairSettings,
                     sampling_seed: int, work_dir: Path, model_dirs: list[Path]) -> tuple[list[list[str]], Shard]:
    """`samples_per_problem` SFT answers per problem, in problem order, resumable chunk by chunk
    (each chunk seeded by its index alone, as the instruction answers are)."""
    k, size = settings.samples_per_problem, settings.checkpoint_every
    code = hashlib.sha256(Path(sys.modules[__name__].__file__).read_bytes()).hexdigest()[:16]
    key = fingerprint(code, asdict(settings), sampling_seed, [p["task_id"] for p in problems],
                      directory_digest(*model_dirs))
    shard = Shard(work_dir, "code-solutions", key)
    if not k or not problems:
        return [[] for _ in problems], shard
    chunks = math.ceil(len(problems) / size)
    stats = GenerationStats()

    def make_chunk(index: int, done: list[dict], missing: int) -> list[dict]:
        chosen = problems[len(done): len(done) + min(size, missing)]
        prompts = [chat_prompt(tokenizer, user_message(p)) for p in chosen for _ in range(k)]
        flat = generate_texts(model, tokenizer, prompts, settings.sampling, sampling_seed * 100_003 + 50_000 + index,
                              description=f"code solutions, chunk {index + 1}/{chunks}", stats=stats)
        return [{"key": p["task_id"], "answers": flat[i * k:(i + 1) * k]} for i, p in enumerate(chosen)]

    sampled = fill(shard, len(problems), make_chunk, chunks, "code solutions")
    if [row["key"] for row in sampled] != [p["task_id"] for p in problems]:
        raise RuntimeError(f"{shard.directory} does not match the code problems; delete it and re-run")
    return [row["answers"] for row in sampled], shard


def make_code_pairs(problems: list[dict[str, Any]], answers: list[list[str]],
                    settings: CodePairSettings) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One pair per problem where a rule forms one (sampled answers first, then the references),
    and a report: pairs by rule, sampled answers that passed, problems left unpaired and why,
    every timing measured."""
    def one(item: tuple[dict[str, Any], list[str]]) -> tuple[dict[str, Any] | None, str, dict[str, Any]]:
        problem, sampled = item
        record: dict[str, Any] = {"sampled_passed": 0, "timings": []}
        pair = pair_from_samples(problem, sampled, settings, record) if sampled else None
        why = ""
        if pair is None:
            pair, why = reference_pair(problem, settings, record)
        return pair, why, record

    # Each problem's own runs stay in order; problems run side by side, `workers` at a time.
    with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
        results = list(pool.map(one, zip(problems, answers)))
    pairs = [pair for pair, _, _ in results if pair is not None]
    by_rule: dict[str, int] = {}
    for pair in pairs:
        by_rule[pair["source"]] = by_rule.get(pair["source"], 0) + 1
    report = {
        "problems": len(problems),
        "pairs": len(pairs),
        "pairs_by_source": dict(sorted(by_rule.items())),
        "sampled_answers": sum(len(a) for a in answers),
        "sampled_answers_passed": sum(record["sampled_passed"] for _, _, record in results),
        "unpaired": {p["task_id"]: why for p, (pair, why, _) in zip(problems, results) if pair is None},
        "timings": [t for _, _, record in results for t in record["timings"]],
        "min_speed_ratio": settings.min_speed_ratio,
    }
    return pairs, report


def heldout_rows(problems: list[dict[str, Any]], settings: CodePairSettings) -> list[dict[str, Any]]:
    """The held-out pairs the evaluate stage scores: each problem's prompt, its reference
    (efficient) and slow reference as answers, both verified to pass."""
    rows = []
    for problem in problems:
        for name in ("reference", "slow_reference"):
            verdict = passes(problem, problem[name], settings)
            if not verdict["passed"]:
                raise ValueError(f"preference.sources.code: held-out problem {problem['task_id']}'s {name} does not "
                                 f"pass its own tests ({verdict['status']}); fix the problem file")
        rows.append({"task_id": problem["task_id"], "prompt": user_message(problem),
                     "efficient": code_answer(problem["reference"]), "slow": code_answer(problem["slow_reference"])})
    return rows
