"""Evaluate base, SFT, aligned and compressed models through lm-eval: held-out verifiable
instructions, HumanEval pass@1 (and pass@k), LeetCode-format problems, judge win rate, efficiency.

    python -m stages.evaluate --model models/base --sft models/sft --aligned models/aligned \
        --compressed models/compressed --prompts data/seed/heldout_prompts.txt \
        --samples reports/samples --metrics reports/evaluate.json --preference data/preference

With --preference, the held-out prompts ask for instruction combinations that no training prompt
asked for (besides their base prompts being disjoint), and evaluate.json counts
any held-out prompt that still shares one (a --heldout_file set is counted, not redrawn).
"""

from pathlib import Path

from tunelab import stage
from tunelab.evaluate import EvaluateConfig, Variant, build_tasks, compare_variants, evaluate_all, judge_against_base
from tunelab.instructions import build_ifeval_rows, instruction_mix, read_base_prompts, validate_ifeval_rows
from tunelab.io import read_jsonl, require_rows, write_json, write_jsonl, written_whole
from tunelab.compress import compressed_variants
from tunelab.judge import check_ready
from tunelab.models import artifact_kind


def training_instruction_mixes(preference_dir: Path) -> set[frozenset[str]]:
    """Instruction combinations of the preference stage's training prompts (validation ones may recur:
    nothing is trained on them)."""
    return {instruction_mix(row) for row in read_jsonl(preference_dir / "prompts.jsonl")}


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "model", "sft", "aligned", "compressed", "prompts", "samples", "metrics")
    parser.add_argument("--preference", type=Path, default=None,
                        help="the preference stage's output: held-out prompts avoid every instruction combination "
                             "its training prompts use")
    args = parser.parse_args(argv)
    config, params = stage.load(args.params, "evaluate", EvaluateConfig)
    check_ready(config.judge)  # an unreachable judge fails now, not after every variant was evaluated

    training_mixes = training_instruction_mixes(args.preference) if args.preference else set()
    if config.heldout_file:
        ifeval_rows = validate_ifeval_rows(require_rows(read_jsonl(config.heldout_file), config.heldout_file),
                                           config.heldout_file)
    else:
        ifeval_rows = build_ifeval_rows(read_base_prompts(args.prompts), config.heldout, config.heldout_seed,
                                        avoid_mixes=training_mixes)

    # Samples appear whole at the end; the held-out set is written first because the lm-eval task reads it.
    with written_whole(args.samples) as samples:
        heldout_path = samples / "heldout_prompts.jsonl"
        write_jsonl(heldout_path, ifeval_rows)
        tasks = build_tasks(config, str(heldout_path))

        variants = [
            Variant("base", [], str(args.model)),
            Variant("sft", [str(args.sft)], str(args.sft)),
            Variant("aligned", [str(args.sft), str(args.aligned)], str(args.aligned)),
        ]
        passes_through = artifact_kind(args.aligned) == "passthrough"  # method: none
        if passes_through:
            variants.pop()
        for kind, path in compressed_variants(args.compressed).items():
            variants.append(Variant(kind, [], str(path), compressed=True))
        results = evaluate_all(variants, str(args.model), tasks, config)
        if passes_through:  # greedy decoding of the same weights: the sft results are the aligned ones
            results["aligned"] = results["sft"]
        judge = judge_against_base(results, ifeval_rows, config)

        for name, result in results.items():
            for section, rows in result["samples"].items():
                write_jsonl(samples / f"{name}_{section}.jsonl", rows)
    write_json(args.metrics, {
        "method": params.get("method"),
        "tasks": [task.task for task in tasks],
        "ifeval_prompts": len(ifeval_rows),
        "ifeval_prompts_with_a_training_mix": sum(instruction_mix(row) in training_mixes for row in ifeval_rows),
        "humaneval_problems": len(results["base"]["scores"]["humaneval"]["pass@1"]),
        "judge": judge,
        "variants": {name: result["metrics"] for name, result in results.items()},
        "comparisons": compare_variants(results, seed=config.seed),
    })


if __name__ == "__main__":
    stage.run(main)
