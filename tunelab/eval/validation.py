"""Score models on the validation prompts, to choose settings there and never on the held-out set.

    python -m tunelab.eval.validation --model models/base --preference data/preference \
        --variant base= --variant sft=models/sft --variant whole_answers=/tmp/sft-256 \
        --prompts validation+training --out reports/validation/sft_choice.json

Each --variant NAME=ADAPTERS is the base model with that comma-separated adapter chain (empty:
base itself), answering greedily with the preference stage's validation decoding. The prompts are
the preference stage's validation split (`validation`), or it plus the preference training
prompts (`validation+training`): SFT never sees either, so for choosing SFT settings all of them
are fair and four times as many; for alignment settings only `validation` is (align trains on the
rest). Prints and writes each variant's four IFEval accuracies and, against the first variant,
the prompts won and lost and McNemar's exact p-value.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tunelab.core.io import read_json, read_jsonl, write_json
from tunelab.eval.stats import mcnemar

PROMPT_SETS = ("validation", "validation+training")


def validation_rows(preference_dir: Path, prompts: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The chosen prompt rows and the validation decoding the preference stage used."""
    validation = read_json(preference_dir / "validation.json")
    rows = list(validation["rows"])
    if prompts == "validation+training":
        rows += read_jsonl(preference_dir / "prompts.jsonl")
    return rows, validation["sampling"]


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, separator, adapters = text.partition("=")
    if not separator or not name:
        raise SystemExit(f"error: --variant {text!r}: write NAME=ADAPTER[,ADAPTER...] (NAME= for the base model)")
    return name, [part for part in adapters.split(",") if part]


def score_variants(base_dir: str, variants: list[tuple[str, list[str]]], rows: list[dict[str, Any]],
                   sampling: dict[str, Any]) -> dict[str, dict[str, Any]]:
    import torch

    from tunelab.core.generation import SamplingSettings
    from tunelab.core.models import load_tokenizer, load_variant
    from tunelab.train.preference import validation_answers

    tokenizer = load_tokenizer(base_dir)
    scored = {}
    for name, adapters in variants:
        torch.manual_seed(0)
        answers = validation_answers(load_variant(base_dir, adapters), tokenizer, rows, SamplingSettings(**sampling))
        scored[name] = {"adapters": adapters, "accuracy": answers["accuracy"],
                        "prompt_loose": [float(v) for v in answers["prompt_loose"]], "answers": answers["answers"]}
    reference = next(iter(scored))
    for name, result in scored.items():
        if name != reference:
            test = mcnemar(result["prompt_loose"], scored[reference]["prompt_loose"])
            result[f"vs_{reference}"] = {"wins": test["only_a"], "losses": test["only_b"], "p_value": test["p_value"]}
    return scored


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", required=True, help="the base model directory")
    parser.add_argument("--preference", type=Path, default=Path("data/preference"),
                        help="the preference stage's output (validation.json, prompts.jsonl)")
    parser.add_argument("--variant", action="append", required=True,
                        help="NAME=ADAPTER[,ADAPTER...]; the first is the reference the others are tested against")
    parser.add_argument("--prompts", choices=PROMPT_SETS, default="validation")
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for the scores, answers and tests")
    args = parser.parse_args(argv)
    variants = [parse_variant(text) for text in args.variant]
    rows, sampling = validation_rows(args.preference, args.prompts)
    scored = score_variants(args.model, variants, rows, sampling)
    for name, result in scored.items():
        accuracy = result["accuracy"]
        test = next((f" | vs {key[3:]}: won {t['wins']}, lost {t['losses']}, p={t['p_value']:.2f}"
                     for key, t in result.items() if key.startswith("vs_")), "")
        print(f"{name}: prompt loose {100 * accuracy['prompt_level_loose']:.1f}%, inst loose "
              f"{100 * accuracy['inst_level_loose']:.1f}% of {len(rows)} prompts{test}")
    if args.out:
        write_json(args.out, {"prompts": args.prompts, "rows": len(rows), "sampling": sampling, "variants": scored})


if __name__ == "__main__":
    main()
