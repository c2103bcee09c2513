"""The report's figures: scores with intervals, training curves, and the compression trade-off.

Each function draws one PNG (readable at README width: 120 dpi, labelled axes with units) and
returns its path. Intervals are the precomputed 95% bootstrap intervals from evaluate.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

VARIANTS = ("base", "sft", "aligned", "int8", "pruned")
SCORES = (("ifeval", "prompt_level_loose", "IFEval prompt loose"), ("ifeval", "inst_level_loose", "IFEval inst loose"),
          ("humaneval", "pass@1", "HumanEval pass@1"), ("explanation", "bleu", "explanation sacreBLEU"),
          ("explanation", "rougeL", "explanation ROUGE-L"), ("explanation", "bertscore_f1", "explanation BERTScore"))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    return plt


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path


def score_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant and score, in %, with its interval; unscored (n=0) ones left out."""
    rows = []
    for name in VARIANTS:
        for section, key, label in SCORES:
            metric = evaluation.get(name, {}).get(section, {}).get(key)
            if metric and metric["mean"] is not None:
                rows.append({"variant": name, "metric": label, "value": 100 * metric["mean"],
                             "low": 100 * metric["ci_low"], "high": 100 * metric["ci_high"]})
    return rows


def bars_with_intervals(rows: list[dict[str, Any]], x: str, hue: str, title: str, path: Path) -> Path:
    """Grouped bars of `value` with the rows' own low/high as error bars."""
    import pandas as pd
    import seaborn as sns

    plt = _pyplot()
    frame = pd.DataFrame(rows)
    figure, axis = plt.subplots(figsize=(11, 4.8))
    sns.barplot(data=frame, x=x, y="value", hue=hue, ax=axis, errorbar=None)
    # seaborn cannot draw precomputed intervals itself; put them on the bars it drew.
    for container, group in zip(axis.containers, frame[hue].unique()):
        part = frame[frame[hue] == group]
        centers = [bar.get_x() + bar.get_width() / 2 for bar in container]
        axis.errorbar(centers, part["value"], yerr=[part["value"] - part["low"], part["high"] - part["value"]],
                      fmt="none", ecolor="black", capsize=3, linewidth=1)
    axis.set_ylabel("score (%), bars = 95% bootstrap CI")
    axis.set_xlabel("")
    axis.set_title(title)
    axis.legend(title=hue, fontsize=9, bbox_to_anchor=(1.01, 1), loc="upper left")  # outside: never over a bar
    return _save(figure, path)


def training_curves(reports: dict[str, Any], path: Path) -> Path:
    import pandas as pd
    import seaborn as sns

    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, stage in zip(axes, ("sft", "align")):
        history = pd.DataFrame(reports[stage].get("history", []))
        if not history.empty:
            sns.lineplot(data=history, x="step", y="loss", ax=axis, marker="o")
        title = f"SFT ({reports['sft'].get('method', '')})" if stage == "sft" else f"alignment ({reports['align']['method']})"
        axis.set_title(f"{title} training loss")
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("training loss (per token, nats)" if stage == "sft" else "training loss (method's objective)")
    return _save(figure, path)


def online_rl_curves(history: list[dict[str, Any]], method: str, path: Path) -> Path:
    """GRPO/RLOO per step: each reward's mean ± SD over the step's completions, the KL to the SFT
    model, and completion length with the share cut at the limit (the guard's concern)."""
    plt = _pyplot()
    figure, (rewards, kl, length) = plt.subplots(1, 3, figsize=(13, 3.8))
    steps = [entry["step"] for entry in history]
    names = sorted({key.split("/")[1] for entry in history for key in entry
                    if key.startswith("rewards/") and key.endswith("/mean")})
    for name in names:
        means = [entry.get(f"rewards/{name}/mean", float("nan")) for entry in history]
        spread = [entry.get(f"rewards/{name}/std", 0.0) for entry in history]
        rewards.plot(steps, means, marker="o", label=name)
        rewards.fill_between(steps, [m - s for m, s in zip(means, spread)], [m + s for m, s in zip(means, spread)],
                             alpha=0.15)
    rewards.set_title(f"{method}: reward per function (mean ± SD)")
    rewards.set_xlabel("optimizer step")
    rewards.legend(fontsize=8)
    kl.plot(steps, [entry.get("kl", float("nan")) for entry in history], marker="o")
    kl.set_title("KL to the SFT model (0 when beta = 0: not computed)")
    kl.set_xlabel("optimizer step")
    length.plot(steps, [entry.get("completions/mean_length", float("nan")) for entry in history], marker="o",
                label="mean length (tokens)")
    length.set_xlabel("optimizer step")
    length.set_title("completion length; share cut at the limit")
    clipped = length.twinx()
    clipped.plot(steps, [entry.get("completions/clipped_ratio", float("nan")) for entry in history], color="grey",
                 linestyle="--", label="cut at the limit (share)")
    clipped.set_ylim(0, 1)
    length.legend(fontsize=8, loc="upper left")
    clipped.legend(fontsize=8, loc="upper right")
    return _save(figure, path)


COMPRESSION = ("aligned", "int8", "pruned")


def compression_tradeoff(evaluation: dict[str, Any], path: Path) -> Path:
    """Quality against size and against generation speed: the aligned model and its compressions.

    Colour is the variant and marker the metric, so close points stay readable without labels.
    """
    from matplotlib.lines import Line2D

    plt = _pyplot()
    colours = dict(zip(COMPRESSION, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    metrics = (("ifeval", "prompt_level_loose", "IFEval prompt loose", "o"), ("humaneval", "pass@1", "HumanEval pass@1", "s"))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for axis, (key, label) in zip(axes, (("artifact_mb", "size on disk (MB)"), ("tokens_per_s", "generation speed (tokens/s)"))):
        for variant in (v for v in COMPRESSION if v in evaluation):
            for section, metric_key, _, marker in metrics:
                metric = evaluation[variant][section][metric_key]
                if metric["mean"] is None:
                    continue
                value = 100 * metric["mean"]
                axis.errorbar([evaluation[variant]["efficiency"][key]], [value], fmt=marker, color=colours[variant],
                              yerr=[[value - 100 * metric["ci_low"]], [100 * metric["ci_high"] - value]], capsize=3)
        axis.set_xlabel(label)
    axes[0].set_ylabel("score (%), bars = 95% bootstrap CI")
    handles = [Line2D([], [], color=colours[v], marker="o", linestyle="", label=v) for v in COMPRESSION if v in evaluation]
    handles += [Line2D([], [], color="grey", marker=marker, linestyle="", label=name) for *_, name, marker in metrics]
    axes[1].legend(handles=handles, fontsize=9, loc="best")
    figure.suptitle("Compression trade-off: quality against size and speed")
    return _save(figure, path)


TRAINING_STEPS = ("base", "sft", "aligned")


def instruction_type_accuracy(instruction_types: dict[str, dict[str, Any]], path: Path) -> Path:
    """Loose accuracy per instruction type of base, sft and aligned, with 95% intervals: which kinds
    of constraint each training step changes. A type's label carries how many instructions it has,
    and a star where preference training used it."""
    plt = _pyplot()
    kinds = list(instruction_types)
    steps = [step for step in TRAINING_STEPS if any(step in scores for scores in instruction_types.values())]
    height = 0.8 / max(1, len(steps))
    figure, axis = plt.subplots(figsize=(10, 0.42 * len(kinds) + 1.6))
    for offset, step in enumerate(steps):
        rows = [(position, instruction_types[kind][step]) for position, kind in enumerate(kinds)
                if step in instruction_types[kind]]
        values = [100 * summary["mean"] for _, summary in rows]
        axis.barh([position + offset * height for position, _ in rows], values, height=height, label=step,
                  xerr=[[value - 100 * s["ci_low"] for value, (_, s) in zip(values, rows)],
                        [100 * s["ci_high"] - value for value, (_, s) in zip(values, rows)]],
                  error_kw={"elinewidth": 0.8, "capsize": 2})
    axis.set_yticks([position + height * (len(steps) - 1) / 2 for position in range(len(kinds))])
    axis.set_yticklabels([f"{'* ' if instruction_types[kind].get('in_preference_training') else ''}{kind} "
                          f"(n={instruction_types[kind]['instructions']})" for kind in kinds], fontsize=8)
    axis.invert_yaxis()  # the registry's alphabetical order, top to bottom
    axis.set_xlim(0, 100)
    axis.set_xlabel("instructions followed, loose (%), bars = 95% bootstrap CI")
    axis.set_title("Held-out accuracy by instruction type (* = a type preference pairs were built on)")
    axis.legend(fontsize=9, loc="lower right")
    return _save(figure, path)


def make_figures(reports: dict[str, Any], out_dir: Path) -> list[Path]:
    evaluation = reports["evaluate"]["variants"]
    return [
        bars_with_intervals(score_rows(evaluation), "metric", "variant",
                            f"Base vs SFT vs aligned ({reports['align']['method']}) and compressed", out_dir / "variants.png"),
        training_curves(reports, out_dir / "training_curves.png"),
        compression_tradeoff(evaluation, out_dir / "compression.png"),
        *([instruction_type_accuracy(reports["evaluate"]["instruction_types"], out_dir / "instruction_types.png")]
          if reports["evaluate"].get("instruction_types") else []),
        *([online_rl_curves(reports["align"]["history"], reports["align"]["method"], out_dir / "online_rl.png")]
          if reports["align"].get("samples") and reports["align"].get("history") else []),
    ]
