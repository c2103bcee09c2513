"""The headline numbers: the few a researcher compares experiments on, and DVC's only metrics file.

`dvc exp show` and `dvc metrics diff` print every number of every file `dvc.yaml` declares as
metrics; with all the reports declared, `dvc exp show` was a table of nothing but `…`. So the
report stage writes these numbers to reports/headline.json, the one metrics file, and the full
reports stay plain outputs (the report, MLflow, `make compare` and the seeds table read them).

Keys, in the order `dvc exp show` prints them (it folds columns from the right when the screen
is narrow, so what matters most comes first); held-out numbers are prompt-level loose accuracy on
the held-out verifiable-instruction set, in %:
- `aligned`, `sft`, `base`: each variant's held-out accuracy;
- `aligned-sft`, `aligned-base`: paired differences in points, `p_sft`, `p_base` their p-values
  (McNemar's exact test);
- `humaneval.<variant>`: HumanEval pass@1 in %;
- `sft_eval_loss`: SFT's validation loss; `train_minutes`: minutes SFT and alignment trained;
- `validation.aligned`, `validation.sft`: prompt-level loose accuracy (%) on the validation prompts,
  where settings are chosen, and `validation.wins` / `validation.losses`: prompts only aligned /
  only sft passes;
- compressed variants' held-out accuracy (`int8`, `pruned`) where they ran;
- `interval.<variant>.low/high` and `interval.humaneval.<variant>.low/high`: the 95% bootstrap
  intervals of those scores.
"""

from __future__ import annotations

from typing import Any

VARIANTS = ("aligned", "sft", "base")
COMPRESSED = ("int8", "pruned")
HELD_OUT = ("ifeval", "prompt_level_loose")
HUMANEVAL = ("humaneval", "pass@1")


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else round(100 * fraction, 1)


def _p_value(p: float | None) -> float | None:
    """Two significant digits: 0.043, 0.00054 (rounding to places would print small ones as 0)."""
    return None if p is None else float(f"{p:.2g}")


def variant_score(variants: dict[str, Any], variant: str, path: tuple[str, str]) -> dict[str, Any] | None:
    """One variant's metric (mean, interval, n) at (section, name); None where it has no estimate."""
    metric = variants.get(variant, {}).get(path[0], {}).get(path[1])
    return metric if metric and metric.get("mean") is not None else None


def headline(reports: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one run from its reports ({stage name: report}); keys in the module docstring."""
    evaluation = reports["evaluate"]
    variants, comparisons = evaluation["variants"], evaluation.get("comparisons", {})
    numbers: dict[str, Any] = {}
    held_out = {name: score for name in (*VARIANTS, *COMPRESSED) if (score := variant_score(variants, name, HELD_OUT))}
    humaneval = {name: score for name in (*VARIANTS, *COMPRESSED) if (score := variant_score(variants, name, HUMANEVAL))}

    def held_out_score(name: str) -> float | None:
        return _percent(held_out[name]["mean"]) if name in held_out else None

    def against(reference: str) -> tuple[float | None, float | None]:
        test = comparisons.get(f"aligned_vs_{reference}", {}).get(".".join(HELD_OUT))
        return (_percent(test["diff"]), _p_value(test["p_value"])) if test else (None, None)

    numbers["aligned"] = held_out_score("aligned")
    numbers["aligned-sft"], numbers["p_sft"] = against("sft")
    numbers["sft"], numbers["base"] = held_out_score("sft"), held_out_score("base")
    numbers["aligned-base"], numbers["p_base"] = against("base")
    numbers["humaneval"] = {name: _percent(score["mean"]) for name, score in humaneval.items() if name in VARIANTS}
    numbers["sft_eval_loss"] = None if reports["sft"].get("eval_loss") is None else round(reports["sft"]["eval_loss"], 4)
    minutes = sum(reports[name].get("runtime_s") or 0.0 for name in ("sft", "align")) / 60
    numbers["train_minutes"] = round(minutes, 1)
    validation = reports["align"].get("validation") or {}
    numbers["validation"] = {
        "aligned": _percent(validation.get("aligned", {}).get("prompt_level_loose")),
        "sft": _percent(validation.get("sft", {}).get("prompt_level_loose")),
        "wins": validation.get("aligned_wins_over_sft"), "losses": validation.get("aligned_losses_to_sft")}
    numbers.update({name: held_out_score(name) for name in COMPRESSED if name in held_out})
    numbers["interval"] = {name: {"low": _percent(score["ci_low"]), "high": _percent(score["ci_high"])}
                           for name, score in held_out.items()}
    numbers["interval"]["humaneval"] = {name: {"low": _percent(score["ci_low"]), "high": _percent(score["ci_high"])}
                                        for name, score in humaneval.items()}
    return numbers
