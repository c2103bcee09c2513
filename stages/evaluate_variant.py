"""Evaluate one model variant through lm-eval: held-out verifiable instructions, HumanEval pass@1
(and pass@k), LeetCode-format problems, code explanation (BLEU, ROUGE-L, BERTScore), efficiency, and the preference for the efficient
solution on held-out code pairs.

    python -m stages.evaluate_variant --variant aligned --model models/base --sft models/sft \
        --aligned models/aligned --heldout data/heldout --out reports/eval/aligned

dvc.yaml has one stage per variant (evaluate_base, evaluate_sft, evaluate_aligned,
evaluate_compressed), each depending only on the models it loads, so `dvc exp run -S method=orpo`
re-evaluates the aligned and compressed models while base's and sft's results stay as they are.
--variant compressed evaluates every model the compress stage wrote (int8, pruned). Writes
results.jsonl: one line per variant with its metrics, per-item scores (for the paired tests) and
samples, in the order lm-eval produced them.
"""

from pathlib import Path

from tunelab.core import stage
from tunelab.core.io import write_jsonl, written_whole
from tunelab.core.models import artifact_kind
from tunelab.eval.evaluate import (
    VARIANTS,
    EvaluateSettings,
    build_tasks,
    evaluate_all,
    heldout_code_pairs,
    variants_to_run,
)
from tunelab.sandbox.protections import require_for_stage


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "model", "heldout", "out")
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    for name in ("sft", "aligned", "compressed"):  # the stage outputs a variant is built from
        parser.add_argument(f"--{name}", type=Path, default=None, help=f"the {name} stage's output")
    args = parser.parse_args(argv)
    config, study = stage.load(args.params, "evaluate", EvaluateSettings)
    sandbox = require_for_stage(study.params)  # before any model is loaded or any code runs
    variants = variants_to_run(args.variant, args.model,
                               {name: getattr(args, name) for name in ("sft", "aligned", "compressed")})
    heldout = args.heldout / "ifeval.jsonl"
    if not heldout.is_file():
        raise FileNotFoundError(f"{heldout} does not exist; run the heldout stage first (dvc repro heldout)")

    with written_whole(args.out) as out:
        if args.variant == "aligned" and artifact_kind(args.aligned) == "passthrough":
            # method: none. Greedy decoding of the same weights: the evaluate stage reuses sft's results.
            rows = [{"variant": "aligned", "same_as": "sft"}]
        else:
            tasks = build_tasks(config, str(heldout), str(args.model), heldout_code_pairs(args.heldout))
            results = evaluate_all(variants, str(args.model), tasks, config)
            rows = [{"variant": name, **result, "sandbox": sandbox} for name, result in results.items()]
        write_jsonl(out / "results.jsonl", rows)


if __name__ == "__main__":
    stage.run(main)
