"""Evaluate model variants: verifiable instruction following, HumanEval pass@1, efficiency.

Each variant is evaluated in a fresh spawned process so its peak memory is its own and a crash
in one cannot corrupt another's numbers. Generated code is only ever executed by
`tunelab.sandbox`, never in this process.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from tunelab.config import check_range
from tunelab.generation import GenerationStats, SamplingConfig, chat_prompt, generate_texts
from tunelab.instructions import InstructionMix, ifeval_accuracy, score_response
from tunelab.stats import summarise

IFEVAL_METRICS = ("prompt_level_strict", "prompt_level_loose", "inst_level_strict", "inst_level_loose")


@dataclass
class EvaluateConfig:
    heldout: InstructionMix = field(default_factory=InstructionMix)
    heldout_seed: int = 1000  # differs from preference.seed so instruction draws differ too
    heldout_file: str | None = None  # an IFEval-format JSONL (e.g. the real IFEval) used instead
    humaneval_limit: int = 20  # first N of HumanEval's 164 problems; 0 runs all
    humaneval_style: Literal["completion", "chat"] = "chat"  # completion = the paper's base-model protocol
    ifeval_sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(max_new_tokens=192, temperature=0.0, batch_size=32,
                                               repetition_penalty=1.1)
    )  # greedy: evaluation must not depend on sampling luck
    code_sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(max_new_tokens=256, temperature=0.0, batch_size=32,
                                               repetition_penalty=1.0)
    )
    sandbox_timeout_s: float = 10.0
    sandbox_memory_mb: int = 1024
    sandbox_workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("evaluate.humaneval_limit", self.humaneval_limit, 0)
        check_range("evaluate.sandbox_timeout_s", self.sandbox_timeout_s, 0.1)


@dataclass
class Variant:
    name: str
    adapters: list[str]
    artifact_dir: str


def evaluate_variant(
    variant: Variant, base_dir: str, ifeval_rows: list[dict], problems: list[dict], config: EvaluateConfig
) -> dict[str, Any]:
    """All metrics and per-sample outputs of one variant (runs in its own process)."""
    import torch

    from tunelab.humaneval import build_prompt, extract_completion, generation_stops
    from tunelab.models import directory_size_mb, load_tokenizer, load_variant, variant_parts
    from tunelab.sandbox import check_samples
    from tunelab.training import peak_memory_mb

    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(base_dir)
    model = load_variant(base_dir, variant.adapters)

    ifeval_stats = GenerationStats()
    answers = generate_texts(
        model, tokenizer, [chat_prompt(tokenizer, r["prompt"]) for r in ifeval_rows], config.ifeval_sampling,
        config.seed, description=f"{variant.name}: instructions", stats=ifeval_stats,
    )
    scored = [score_response(row, answer) for row, answer in zip(ifeval_rows, answers)]

    code_stats = GenerationStats()
    generated = generate_texts(
        model, tokenizer, [build_prompt(tokenizer, p, config.humaneval_style) for p in problems],
        config.code_sampling, config.seed, description=f"{variant.name}: humaneval",
        stop_strings=generation_stops(config.humaneval_style),
        stats=code_stats,
    )
    completions = [extract_completion(text, config.humaneval_style) for text in generated]
    started = time.perf_counter()
    verdicts = check_samples(
        {p["task_id"]: p for p in problems},
        [{"task_id": p["task_id"], "completion": c} for p, c in zip(problems, completions)],
        timeout=config.sandbox_timeout_s, memory_mb=config.sandbox_memory_mb, workers=config.sandbox_workers,
    )
    sandbox_s = time.perf_counter() - started

    metrics: dict[str, Any] = {"ifeval": {}, "humaneval": {}, "efficiency": {}}
    for name in IFEVAL_METRICS:
        if name.startswith("prompt"):
            values = [float(s["prompt_" + name.split("_")[-1]]) for s in scored]
        else:
            kind = name.split("_")[-1]
            values = [float(v) for s in scored for v in s[kind]]
        metrics["ifeval"][name] = summarise(values, seed=config.seed)
    metrics["ifeval"]["check"] = ifeval_accuracy(scored)  # the same numbers, computed IFEval's way
    metrics["humaneval"]["pass@1"] = summarise([float(v["passed"]) for v in verdicts], seed=config.seed)
    metrics["humaneval"]["sandbox_s"] = sandbox_s
    total = GenerationStats(ifeval_stats.new_tokens + code_stats.new_tokens, ifeval_stats.seconds + code_stats.seconds)
    sizes_mb = [directory_size_mb(Path(d)) for d, _ in variant_parts(base_dir, variant.adapters)]  # weights first
    metrics["efficiency"] = {
        "tokens_per_s": total.tokens_per_s,
        "peak_memory_mb": peak_memory_mb(),
        "artifact_mb": sum(sizes_mb),
        "adapter_mb": sum(sizes_mb[1:]),
    }
    samples = {
        "ifeval": [
            {"key": row["key"], "prompt": row["prompt"], "response": answer, **{k: s[k] for k in ("strict", "loose")}}
            for row, answer, s in zip(ifeval_rows, answers, scored)
        ],
        "humaneval": [
            {"task_id": p["task_id"], "completion": c, "status": v["status"], "passed": v["passed"], "error": v["error"]}
            for p, c, v in zip(problems, completions, verdicts)
        ],
    }
    return {"metrics": metrics, "samples": samples}


def evaluate_all(
    variants: list[Variant], base_dir: str, ifeval_rows: list[dict], problems: list[dict], config: EvaluateConfig
) -> dict[str, dict[str, Any]]:
    """Evaluate variants one after another, each in a fresh process."""
    results = {}
    context = get_context("spawn")
    for variant in variants:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            results[variant.name] = pool.submit(
                evaluate_variant, variant, base_dir, ifeval_rows, problems, config
            ).result()
    return results
