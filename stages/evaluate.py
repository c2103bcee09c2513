"""Bring the variants' evaluations together: the judge's win rate against base, paired tests of
every difference, and the samples, in reports/evaluate.json and reports/samples.

    python -m stages.evaluate --model models/base --results reports/eval --heldout data/heldout \
        --samples reports/samples --metrics reports/evaluate.json

Each variant was evaluated by its own stage (stages/evaluate_variant.py) into
reports/eval/<variant>/results.jsonl; this stage reads base, sft, aligned and compressed in that
order. The judge runs here because its verdicts compare two variants' answers. --model is the base
model directory: the default local judge (evaluate.judge.model) is that model.
"""

from tunelab.core import stage
from tunelab.core.config import load_section
from tunelab.core.io import (
    read_json,
    read_jsonl,
    require_rows,
    write_json,
    write_jsonl,
    written_whole,
)
from tunelab.eval.evaluate import (
    EvaluateSettings,
    accuracy_by_instruction_type,
    build_tasks,
    heldout_code_pairs,
    explanation_scoring,
    judge_against_base,
    paired_tests,
    read_variant_results,
    sandbox_summary,
)
from tunelab.synth.judge import check_ready
from tunelab.train.preference import PreferenceSettings


def main(argv: list[str] | None = None) -> None:
    args = stage.parser(__doc__, "model", "results", "heldout", "samples", "metrics").parse_args(argv)
    config, study = stage.load(args.params, "evaluate", EvaluateSettings)
    check_ready(config.judge)  # an unreachable judge fails before anything is read or written

    heldout_path = args.heldout / "ifeval.jsonl"
    ifeval_rows = require_rows(read_jsonl(heldout_path), heldout_path)
    heldout = read_json(args.heldout / "summary.json")
    results = read_variant_results(args.results)
    # The types preference pairs were built on: the per-type figure sets them apart from the unseen ones.
    trained_types = set(load_section(study.params, "preference", PreferenceSettings).instructions.instruction_ids)
    judge = judge_against_base(results, ifeval_rows, config)

    with written_whole(args.samples) as samples:
        write_jsonl(samples / "heldout_prompts.jsonl", ifeval_rows)
        for name, result in results.items():
            for section, rows in result["samples"].items():
                write_jsonl(samples / f"{name}_{section}.jsonl", rows)
    write_json(args.metrics, {
        "method": study.method,
        "tasks": [task.task for task in build_tasks(config, str(heldout_path), str(args.model),
                                                    heldout_code_pairs(args.heldout))],
        "ifeval_prompts": len(ifeval_rows),
        "ifeval_prompts_with_a_training_mix": heldout["prompts_with_a_training_mix"],
        "humaneval_problems": len(results["base"]["scores"]["humaneval"]["pass@1"]),
        "code_pairs": heldout.get("code_pairs", 0),
        "judge": judge,
        "explanation": explanation_scoring(config, str(args.model)),
        "variants": {name: result["metrics"] for name, result in results.items()},
        "instruction_types": accuracy_by_instruction_type(ifeval_rows, results, trained_types, seed=config.seed),
        "comparisons": paired_tests(results, seed=config.seed),
        "sandbox": sandbox_summary(results),
    })


if __name__ == "__main__":
    stage.run(main)
