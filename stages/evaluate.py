"""Evaluate base, SFT and aligned models: held-out verifiable instructions, HumanEval, efficiency.

    python -m stages.evaluate --model models/base --sft models/sft --aligned models/aligned \
        --prompts data/seed/heldout_prompts.txt --samples reports/samples --metrics reports/evaluate.json
"""


from tunelab import stage
from tunelab.evaluate import EvaluateConfig, Variant, evaluate_all
from tunelab.humaneval import load_humaneval
from tunelab.instructions import build_ifeval_rows, read_base_prompts, validate_ifeval_rows
from tunelab.io import read_jsonl, require_rows, write_json, write_jsonl
from tunelab.models import artifact_kind


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "model", "sft", "aligned", "prompts", "samples", "metrics")
    args = parser.parse_args(argv)
    config, params = stage.load(args.params, "evaluate", EvaluateConfig)

    if config.heldout_file:
        ifeval_rows = validate_ifeval_rows(require_rows(read_jsonl(config.heldout_file), config.heldout_file),
                                           config.heldout_file)
    else:
        ifeval_rows = build_ifeval_rows(read_base_prompts(args.prompts), config.heldout, config.heldout_seed)
    problems = load_humaneval(limit=config.humaneval_limit or None)
    variants = [
        Variant("base", [], str(args.model)),
        Variant("sft", [str(args.sft)], str(args.sft)),
        Variant("aligned", [str(args.sft), str(args.aligned)], str(args.aligned)),
    ]
    passes_through = artifact_kind(args.aligned) == "passthrough"  # method: none
    results = evaluate_all(variants[:2] if passes_through else variants, str(args.model), ifeval_rows, problems,
                           config)
    if passes_through:  # greedy decoding of the same weights: the sft results are the aligned ones
        results["aligned"] = results["sft"]
    for name, result in results.items():
        for task, rows in result["samples"].items():
            write_jsonl(args.samples / f"{name}_{task}.jsonl", rows)
    write_jsonl(args.samples / "heldout_prompts.jsonl", ifeval_rows)
    write_json(args.metrics, {
        "method": params.get("method"),
        "ifeval_prompts": len(ifeval_rows),
        "humaneval_problems": len(problems),
        "variants": {name: result["metrics"] for name, result in results.items()},
    })


if __name__ == "__main__":
    stage.run(main)
