"""Evaluate model variants through lm-evaluation-harness, with intervals and paired tests.

Every variant (base, sft, aligned, compressed) answers the same items through the same lm-eval
tasks (`tunelab/eval/lm_eval_tasks`, plus any lm-eval task named in params). Each variant runs in a
fresh spawned process so its peak memory is its own and a crash in one cannot corrupt another's
numbers. Generated code is only ever executed by `tunelab.sandbox`, never in this process.
"""

from __future__ import annotations

import functools
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from tunelab.core.config import ConfigError, check_range
from tunelab.synth.judge import JudgeSettings
from tunelab.eval.lmeval import SECTIONS, LmEvalTask
from tunelab.eval.stats import paired_test, summarise
from tunelab.tasks.instructions import InstructionMix

# (variant, reference): what each difference answers. Compressed variants are judged against
# the model they compress; the judge's win rate is always against base.
TESTED_PAIRS = (("sft", "base"), ("aligned", "sft"), ("aligned", "base"), ("int8", "aligned"),
               ("pruned", "aligned"))
# greedy: one pass or fail per problem; a code pair is won or lost
PASS_FAIL_METRICS = {"humaneval.pass@1", "leetcode.pass@1", "code_pairs.acc"}


@dataclass
class Decoding:
    """How a task's answers are generated (lm-eval generation_kwargs)."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy: evaluation must not depend on sampling luck
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("temperature", self.temperature, 0.0)

    def generation_kwargs(self, until: list[str] | None = None, stop_after_code_block: bool = False) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"until": until or [], "max_gen_toks": self.max_new_tokens,
                                  "do_sample": self.temperature > 0}
        if stop_after_code_block:  # only the first code block is run: tokens after it are never read
            kwargs["stop_after_code_block"] = True
        if self.temperature > 0:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


@dataclass
class PassAtK:
    samples: int = 0  # n sampled completions per HumanEval problem; 0 = greedy pass@1 only
    k: list[int] = field(default_factory=lambda: [1, 5])
    limit: int = 0  # first N HumanEval problems to sample; 0 = the same problems as greedy pass@1
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=192, temperature=0.8, top_p=0.95))

    def __post_init__(self) -> None:
        check_range("evaluate.pass_at_k.samples", self.samples, 0)
        check_range("evaluate.pass_at_k.limit", self.limit, 0)
        for k in self.k:
            if self.samples and not 1 <= k <= self.samples:
                raise ConfigError(f"evaluate.pass_at_k.k: {k} needs 1 <= k <= samples ({self.samples})")


@dataclass
class LeetCodeEval:
    file: str | None = None  # a LeetCodeDataset-format JSONL; null = off
    limit: int = 0  # first N problems; 0 = all
    quality_repeats: int = 3  # runs per solution for the runtime ratio (the least CPU time is kept)
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=384))


@dataclass
class ExplanationEval:
    """The code explanation task (tunelab.tasks.explanation): BLEU, ROUGE-L and BERTScore."""

    file: str | None = None  # {id, code, references} JSONL (params: data/seed/explanation_tasks.jsonl); None = off
    limit: int = 0  # first N snippets; 0 = all
    bertscore_model: str | None = None  # BERTScore's encoder: a local dir or hub id; null = the base model
    bertscore_layer: int | None = None  # its hidden layer; null = two thirds of its depth
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=128, repetition_penalty=1.1))

    def __post_init__(self) -> None:
        check_range("evaluate.explanation.limit", self.limit, 0)
        if self.file is not None:  # a missing file or a bad row stops the stage here, not after a model is loaded
            from tunelab.tasks.explanation import load_explanation_tasks

            if not Path(self.file).is_file():
                raise ConfigError(f"evaluate.explanation.file: {self.file} does not exist; fix the path to a JSONL "
                                  "of {id, code, references}, or set null to leave the explanation task out")
            try:
                load_explanation_tasks(self.file)
            except ValueError as error:
                raise ConfigError(f"evaluate.explanation.file: {error}") from None
        if self.bertscore_layer is not None:
            check_range("evaluate.explanation.bertscore_layer", self.bertscore_layer, 1)

    def encoder(self, base_dir: str) -> str:
        return self.bertscore_model or base_dir


@dataclass
class EvaluateSettings:
    heldout: InstructionMix = field(default_factory=InstructionMix)
    heldout_seed: int = 1000  # differs from preference.seed so instruction draws differ too
    heldout_file: str | None = None  # an IFEval-format JSONL (e.g. the real IFEval) used instead
    humaneval_limit: int = 20  # first N of HumanEval's 164 problems; 0 runs all
    humaneval_style: Literal["completion", "chat"] = "chat"  # completion = the paper's base-model protocol
    ifeval_sampling: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=192, repetition_penalty=1.1))
    code_sampling: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=256))
    pass_at_k: PassAtK = field(default_factory=PassAtK)
    leetcode: LeetCodeEval = field(default_factory=LeetCodeEval)
    explanation: ExplanationEval = field(default_factory=ExplanationEval)
    # Each variant's preference for the efficient solution on the held-out code pairs (the heldout
    # stage's code_pairs.jsonl, from preference.sources.code.heldout); evaluated when that file has rows.
    code_pairs: bool = True
    lm_eval_tasks: list[LmEvalTask] = field(default_factory=list)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    batch_size: int = 32
    sandbox_timeout_s: float = 10.0
    sandbox_memory_mb: int = 1024
    sandbox_workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("evaluate.humaneval_limit", self.humaneval_limit, 0)
        check_range("evaluate.sandbox_timeout_s", self.sandbox_timeout_s, 0.1)
        check_range("evaluate.batch_size", self.batch_size, 1)
        if self.heldout_file is not None and not Path(self.heldout_file).is_file():
            raise ConfigError(f"evaluate.heldout_file: {self.heldout_file} does not exist; fix the path to an "
                              "IFEval-format JSONL, or set null to draw the held-out set from --prompts")
        names = [t.task for t in self.lm_eval_tasks]
        ours = sorted(set(names) & set(SECTIONS))
        if ours:
            raise ConfigError(f"evaluate.lm_eval_tasks: {ours[0]} is already run from its own params keys")
        if len(set(names)) != len(names):
            raise ConfigError(f"evaluate.lm_eval_tasks: a task is named twice ({', '.join(names)})")

    @property
    def sandbox(self) -> dict[str, Any]:
        return {"timeout": self.sandbox_timeout_s, "memory_mb": self.sandbox_memory_mb,
                "workers": self.sandbox_workers}


def _sandbox_filter(function: Any, **settings: Any) -> list[dict[str, Any]]:
    return [{"name": "sandbox", "filter": [{"function": "custom", "filter_fn": functools.partial(function, **settings)}]}]


def build_tasks(config: EvaluateSettings, ifeval_path: str, base_dir: str,
                code_pairs_path: str | None = None) -> list[LmEvalTask]:
    """The lm-eval tasks every variant answers, with params applied to our task definitions;
    `base_dir` is the base model, BERTScore's encoder unless params name another;
    `code_pairs_path` the held-out code pairs (none: no code-pair task)."""
    from tunelab.eval.lm_eval_tasks import utils
    from tunelab.tasks.humaneval import STOP_SEQUENCES

    completion_style = config.humaneval_style == "completion"
    code_text = utils.humaneval_completion_text if completion_style else utils.humaneval_chat_text
    until = STOP_SEQUENCES if completion_style else None
    chat_code = not completion_style  # a chat answer's code is its first code block
    humaneval_data = {"dataset_kwargs": {"limit": config.humaneval_limit}, "doc_to_text": code_text}
    tasks = [
        LmEvalTask("tunelab_ifeval", {"dataset_kwargs": {"path": ifeval_path},
                                      "generation_kwargs": config.ifeval_sampling.generation_kwargs()}),
        LmEvalTask("tunelab_humaneval", {
            **humaneval_data, "generation_kwargs": config.code_sampling.generation_kwargs(until, stop_after_code_block=chat_code),
            "filter_list": _sandbox_filter(utils.humaneval_verdicts, style=config.humaneval_style, **config.sandbox),
        }, chat=not completion_style),
    ]
    if config.pass_at_k.samples:
        sampled = config.pass_at_k
        tasks.append(LmEvalTask("tunelab_humaneval_sampled", {
            **humaneval_data, "repeats": sampled.samples,
            "dataset_kwargs": {"limit": sampled.limit or config.humaneval_limit},
            "generation_kwargs": sampled.decoding.generation_kwargs(until, stop_after_code_block=chat_code),
            "filter_list": _sandbox_filter(utils.humaneval_verdicts, style=config.humaneval_style, **config.sandbox),
            "process_results": functools.partial(utils.score_pass_at_k, ks=tuple(sampled.k)),
            "metric_list": [{"metric": f"pass@{k}", "aggregation": "mean", "higher_is_better": True}
                            for k in sampled.k],
        }, chat=not completion_style))
    if config.leetcode.file:
        tasks.append(LmEvalTask("tunelab_leetcode", {
            "dataset_kwargs": {"path": config.leetcode.file, "limit": config.leetcode.limit},
            "generation_kwargs": config.leetcode.decoding.generation_kwargs(stop_after_code_block=True),
            "filter_list": _sandbox_filter(utils.leetcode_verdicts, quality_repeats=config.leetcode.quality_repeats,
                                           **config.sandbox),
        }))
    if config.explanation.file:
        explain = config.explanation
        tasks.append(LmEvalTask("tunelab_explain", {
            "dataset_kwargs": {"path": explain.file, "limit": explain.limit},
            "generation_kwargs": explain.decoding.generation_kwargs(),
            "process_results": functools.partial(utils.score_explanation, encoder=explain.encoder(base_dir),
                                                 layer=explain.bertscore_layer),
        }))
    if config.code_pairs and code_pairs_path:
        tasks.append(LmEvalTask("tunelab_codepairs", {"dataset_kwargs": {"path": code_pairs_path}}))
    return tasks + config.lm_eval_tasks


def heldout_code_pairs(heldout_dir: Path) -> str | None:
    """The heldout stage's code pairs file when it holds any (preference.sources.code.heldout > 0)."""
    path = Path(heldout_dir) / "code_pairs.jsonl"
    return str(path) if path.is_file() and path.stat().st_size else None


def explanation_scoring(config: EvaluateSettings, base_dir: str) -> dict[str, Any]:
    """What the explanation scores were measured with, for the report: the snippets and BERTScore's
    encoder and layer (its scores are only comparable under the same two)."""
    from tunelab.tasks.explanation import encoder_layer, load_explanation_tasks

    explain = config.explanation
    if not explain.file:
        return {"file": None}
    encoder = explain.encoder(base_dir)
    return {"file": explain.file, "snippets": len(load_explanation_tasks(explain.file, explain.limit)),
            "bertscore_encoder": encoder, "bertscore_layer": encoder_layer(encoder, explain.bertscore_layer),
            "bertscore_rescaled": False}


@dataclass
class Variant:
    name: str
    adapters: list[str]
    artifact_dir: str
    compressed: bool = False  # a `compress` stage output (int8 or pruned), loaded by tunelab.train.compress


def _flat(values: list[Any]) -> list[float]:
    """Per-item scores as numbers: instruction-level lists flattened, absent (None) ones left out."""
    flat: list[float] = []
    for value in values:
        if isinstance(value, list):
            flat.extend(float(v) for v in value)
        elif value is not None:
            flat.append(float(value))
    return flat


def _sample_row(sample: dict[str, Any]) -> dict[str, Any]:
    doc = sample["doc"]
    filtered = sample["filtered_resps"][0]
    return {
        "doc_id": sample["doc_id"],
        "id": doc.get("key", doc.get("task_id", sample["doc_id"])),
        "prompt": doc.get("prompt", doc.get("text", "")),
        "responses": sample["resps"][0],
        **({"verdicts": filtered} if not isinstance(filtered, str) else {}),
        **{name: sample[name] for name in sample["metrics"]},
    }


def evaluate_variant(variant: Variant, base_dir: str, tasks: list[LmEvalTask], config: EvaluateSettings
                     ) -> dict[str, Any]:
    """Metrics, per-item scores and samples of one variant (runs in its own process)."""
    import torch

    from tunelab.core.measuring import directory_size_mb, peak_memory_mb
    from tunelab.core.models import load_tokenizer, load_variant, variant_parts
    from tunelab.eval.lmeval import run_tasks, timed_lm

    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(base_dir)
    if variant.compressed:
        from tunelab.train.compress import load_compressed

        model = load_compressed(variant.artifact_dir)
        sizes_mb = [directory_size_mb(Path(variant.artifact_dir))]
    else:
        model = load_variant(base_dir, variant.adapters)
        sizes_mb = [directory_size_mb(Path(d)) for d, _ in variant_parts(base_dir, variant.adapters)]  # weights first
    lm = timed_lm(model, tokenizer, config.batch_size)
    runs = run_tasks(lm, tasks, seed=config.seed)

    metrics: dict[str, Any] = {}
    for section, run in runs.items():
        metrics[section] = {name: summarise(_flat(values), seed=config.seed) for name, values in run.scores.items()}
        metrics[section]["lm_eval"] = {  # lm-eval's own aggregation, as a cross-check of the means
            key.split(",")[0]: value for key, value in run.aggregate.items()
            if isinstance(value, (int, float)) and "_stderr" not in key and key != "sample_len"
        }
    metrics["efficiency"] = {
        "tokens_per_s": lm.new_tokens / lm.seconds if lm.seconds else 0.0,
        "generated_tokens": lm.new_tokens,
        "peak_memory_mb": peak_memory_mb(),
        "artifact_mb": sum(sizes_mb),
        "adapter_mb": sum(sizes_mb[1:]),
    }
    return {
        "metrics": metrics,
        "scores": {section: run.scores for section, run in runs.items()},
        "samples": {section: [_sample_row(s) for s in run.samples] for section, run in runs.items()},
    }


# Each variant and the stage outputs (besides the base model) it is built from; the evaluate stage
# reads their results in this order.
VARIANT_INPUTS = {"base": [], "sft": ["sft"], "aligned": ["sft", "aligned"], "compressed": ["compressed"]}
VARIANTS = tuple(VARIANT_INPUTS)


def variants_to_run(variant: str, base_dir: Path, outputs: dict[str, Path | None]) -> list[Variant]:
    """The models `variant` names, with the adapter chain each one is built from; `outputs` holds the
    sft, aligned and compressed stage outputs given (None where not given)."""
    from tunelab.train.compress import compressed_variants

    missing = [f"--{name}" for name in VARIANT_INPUTS[variant] if outputs.get(name) is None]
    if missing:
        raise ValueError(f"--variant {variant} needs {' and '.join(missing)}")
    if variant == "base":
        return [Variant("base", [], str(base_dir))]
    if variant == "sft":
        return [Variant("sft", [str(outputs["sft"])], str(outputs["sft"]))]
    if variant == "aligned":
        return [Variant("aligned", [str(outputs["sft"]), str(outputs["aligned"])], str(outputs["aligned"]))]
    compressed = Path(outputs["compressed"])
    if not compressed.is_dir():  # an empty directory is fine: compress was told to make nothing
        raise FileNotFoundError(f"{compressed} does not exist; run the compress stage first (dvc repro compress)")
    return [Variant(kind, [], str(path), compressed=True) for kind, path in compressed_variants(compressed).items()]


def read_variant_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Every variant's result by name; one that reuses another's (method: none) is that same object."""
    from tunelab.core.io import read_jsonl

    results: dict[str, dict[str, Any]] = {}
    for stage_variant in VARIANTS:
        path = results_dir / stage_variant / "results.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; run its stage first (dvc repro evaluate_{stage_variant})")
        for row in read_jsonl(path):
            name = row.pop("variant")
            results[name] = results[row["same_as"]] if "same_as" in row else row
    if "base" not in results:
        raise ValueError(f"{results_dir / 'base/results.jsonl'} holds no base results; re-run evaluate_base")
    return results


def sandbox_summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the variants' model code ran under: the protections every variant had (the weakest
    counts), what was required, and each variant's own record (`tunelab.sandbox.protections.record`)."""
    records = {name: result["sandbox"] for name, result in results.items() if result.get("sandbox")}
    if not records:
        return {"protections": [], "required": [], "variants": {}}
    had = [name for name in next(iter(records.values()))["protections"]
           if all(name in record["protections"] for record in records.values())]
    required = sorted({name for record in records.values() for name in record["required"]})
    return {"protections": had, "required": required, "missing": sorted(set(required) - set(had)),
            "variants": records}


def evaluate_all(variants: list[Variant], base_dir: str, tasks: list[LmEvalTask], config: EvaluateSettings
                 ) -> dict[str, dict[str, Any]]:
    """Evaluate variants one after another, each in a fresh process."""
    results = {}
    context = get_context("spawn")
    for variant in variants:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            results[variant.name] = pool.submit(evaluate_variant, variant, base_dir, tasks, config).result()
    return results


def is_pass_fail(section: str, metric: str) -> bool:
    """Whether a metric scores each item pass/fail (McNemar's test) rather than on a scale.

    Decided by the metric, never by the values: sampled pass@k, runtime ratios, lint counts and
    win rates are estimates on a scale even when every item happens to be 0 or 1. Extra lm-eval
    tasks get the paired bootstrap, which is valid for pass/fail items too.
    """
    return section == "ifeval" or f"{section}.{metric}" in PASS_FAIL_METRICS


def paired_tests(results: dict[str, dict[str, Any]], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Paired tests of each difference in TESTED_PAIRS, on every metric both variants scored per item."""
    comparisons: dict[str, dict[str, Any]] = {}
    for name, reference in TESTED_PAIRS:
        if name not in results or reference not in results:
            continue
        tests = {}
        for section, scores in results[name]["scores"].items():
            for metric, values in scores.items():
                other = results[reference]["scores"].get(section, {}).get(metric)
                if other is None or len(other) != len(values):
                    continue
                # Only items both variants have a score for (runtime exists for passing code only).
                pairs = [(a, b) for a, b in zip(values, other) if a is not None and b is not None]
                a = _flat([p[0] for p in pairs])
                b = _flat([p[1] for p in pairs])
                if a and len(a) == len(b):  # no pairs (no solution passed on both sides): nothing to test
                    tests[f"{section}.{metric}"] = paired_test(a, b, is_pass_fail(section, metric), seed=seed)
        comparisons[f"{name}_vs_{reference}"] = tests
    for name, result in results.items():  # a win rate against base is tested against an even 0.5
        judged = result["scores"].get("judge", {}).get("win_rate")
        if judged:
            comparisons.setdefault(f"{name}_vs_base", {})["judge.win_rate"] = paired_test(
                judged, [0.5] * len(judged), pass_fail=False, seed=seed)
    return comparisons


def accuracy_by_instruction_type(ifeval_rows: list[dict[str, Any]], results: dict[str, dict[str, Any]],
                                 trained_types: set[str] = frozenset(), seed: int = 0) -> dict[str, dict[str, Any]]:
    """Loose accuracy of each instruction type, per variant, with its bootstrap interval.

    Every instruction of every held-out prompt counts once toward its own type (IFEval's
    instruction-level score, split by type), so a reader sees which kinds of constraint a training
    step changes and which it leaves alone. `trained_types` are those preference pairs were built
    on. Returns {type: {"instructions": n, "in_preference_training": bool, variant: summary}}.
    """
    by_type: dict[str, dict[str, Any]] = {}
    for name, result in results.items():
        verdicts = result["scores"]["ifeval"]["inst_level_loose"]  # one list per prompt, in row order
        if len(verdicts) != len(ifeval_rows):
            raise ValueError(f"{name} scored {len(verdicts)} held-out prompts, the held-out set has "
                             f"{len(ifeval_rows)}; re-run its evaluate stage on the current data/heldout")
        followed: dict[str, list[float]] = {}
        for row, loose in zip(ifeval_rows, verdicts):
            for kind, verdict in zip(row["instruction_id_list"], loose):
                followed.setdefault(kind, []).append(verdict)
        for kind, values in followed.items():
            by_type.setdefault(kind, {"instructions": len(values), "in_preference_training": kind in trained_types}
                               )[name] = summarise(values, seed=seed)
    return dict(sorted(by_type.items()))


def judge_metrics(pairwise: Any, seed: int) -> dict[str, Any]:
    """A variant's judge section: the win rate with its bootstrap interval, and the verdict counts."""
    return {"win_rate": summarise(pairwise.scores, seed=seed), **pairwise.counts()}


def judge_against_base(results: dict[str, dict[str, Any]], ifeval_rows: list[dict[str, Any]],
                       config: EvaluateSettings) -> dict[str, Any]:
    """Pairwise judge win rate of every variant against base on the held-out instructions.

    Each variant's result gains a `judge` metrics section, per-prompt `scores` for the paired
    tests, and its judgements as samples; the return value names the judge for the report.
    """
    if not config.judge.enabled:
        return {"backend": None}
    from tunelab.synth.judge import open_judge

    questions = [row["prompt"] for row in ifeval_rows]

    def answers(name: str) -> list[str]:
        return [sample["responses"][0] for sample in results[name]["samples"]["ifeval"]]

    judge = open_judge(config.judge)
    try:
        judged: dict[int, Any] = {}  # a pass-through variant shares sft's result object
        for name, result in results.items():
            if name not in config.judge.variants or id(result) in judged:
                continue
            judged[id(result)] = pairwise = judge.judge_pairs(questions, answers("base"), answers(name),
                                                          description=f"{name}: judge")
            result["metrics"]["judge"] = judge_metrics(pairwise, config.seed)
            result["scores"]["judge"] = {"win_rate": pairwise.scores}
            result["samples"]["judge"] = pairwise.samples(questions)
    finally:
        judge.close()
    return {"backend": config.judge.describe(), "reference": "base", "prompts": len(questions)}
