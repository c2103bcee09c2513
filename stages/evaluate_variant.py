"""Evaluate one model variant through lm-eval: held-out verifiable instructions, HumanEval pass@1
(and pass@k), LeetCode-format problems, efficiency.

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

from tunelab import stage
from tunelab.compress import compressed_variants
from tunelab.evaluate import EvaluateConfig, Variant, build_tasks, evaluate_all
from tunelab.io import write_jsonl, written_whole
from tunelab.models import artifact_kind

# Each --variant and the stage outputs (besides --model, the base) it is built from.
NEEDS = {"base": [], "sft": ["sft"], "aligned": ["sft", "aligned"], "compressed": ["compressed"]}
VARIANTS = tuple(NEEDS)


def variants_to_run(args) -> list[Variant]:
    """The models --variant names, with the adapter chain each one is built from."""
    missing = [f"--{name}" for name in NEEDS[args.variant] if getattr(args, name) is None]
    if missing:
        raise ValueError(f"--variant {args.variant} needs {' and '.join(missing)}")
    if args.variant == "base":
        return [Variant("base", [], str(args.model))]
    if args.variant == "sft":
        return [Variant("sft", [str(args.sft)], str(args.sft))]
    if args.variant == "aligned":
        return [Variant("aligned", [str(args.sft), str(args.aligned)], str(args.aligned))]
    if not args.compressed.is_dir():  # an empty directory is fine: compress was told to make nothing
        raise FileNotFoundError(f"{args.compressed} does not exist; run the compress stage first (dvc repro compress)")
    return [Variant(kind, [], str(path), compressed=True) for kind, path in compressed_variants(args.compressed).items()]


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "model", "heldout", "out")
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    for name in ("sft", "aligned", "compressed"):  # the stage outputs NEEDS names
        parser.add_argument(f"--{name}", type=Path, default=None, help=f"the {name} stage's output")
    args = parser.parse_args(argv)
    config, _ = stage.load(args.params, "evaluate", EvaluateConfig)
    variants = variants_to_run(args)
    heldout = args.heldout / "ifeval.jsonl"
    if not heldout.is_file():
        raise FileNotFoundError(f"{heldout} does not exist; run the heldout stage first (dvc repro heldout)")

    with written_whole(args.out) as out:
        if args.variant == "aligned" and artifact_kind(args.aligned) == "passthrough":
            # method: none. Greedy decoding of the same weights: the evaluate stage reuses sft's results.
            rows = [{"variant": "aligned", "same_as": "sft"}]
        else:
            results = evaluate_all(variants, str(args.model), build_tasks(config, str(heldout)), config)
            rows = [{"variant": name, **result} for name, result in results.items()]
        write_jsonl(out / "results.jsonl", rows)


if __name__ == "__main__":
    stage.run(main)
