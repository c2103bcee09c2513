"""The study report: tables with intervals, seaborn figures, and sample answers side by side.

`tunelab.track.tracking` mirrors all of it to MLflow once it is written.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

VARIANTS = ("base", "sft", "aligned", "int8", "pruned")


# Metrics in their own units (a CPU-time ratio, findings per 100 lines); every other one is a
# share of items, shown in percent and its differences in percentage points.
RAW_UNIT_METRICS = ("runtime_ratio", "lint_per_100_lines", "code_pairs.margin")


def interval_cell(metric: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    """'mean [low, high]' in percent (scale 100) or the metric's own units (scale 1)."""
    if metric["mean"] is None:
        return "n/a (n=0)"
    return (f"{metric['mean'] * scale:.{digits}f} [{metric['ci_low'] * scale:.{digits}f}, "
            f"{metric['ci_high'] * scale:.{digits}f}]")


def _n(evaluation: dict[str, Any], section: str, metric: str) -> str:
    found = next((m[section][metric]["n"] for m in evaluation.values() if metric in m.get(section, {})), None)
    return "" if found is None else f" (n={found})"


def results_table(evaluation: dict[str, Any]) -> str:
    """Markdown table: variants x metrics, each mean with its 95% bootstrap interval (in %)."""
    columns = [("ifeval", "prompt_level_loose", "IFEval prompt loose"), ("ifeval", "prompt_level_strict", "IFEval prompt strict"),
               ("ifeval", "inst_level_loose", "IFEval inst loose"), ("ifeval", "inst_level_strict", "IFEval inst strict"),
               ("humaneval", "pass@1", "HumanEval pass@1"), ("leetcode", "pass@1", "LeetCode pass@1"),
               ("judge", "win_rate", "judge win rate vs base")]
    sampled = sorted({k for m in evaluation.values() for k in m.get("humaneval_sampled", {}) if k.startswith("pass@")},
                     key=lambda k: int(k.removeprefix("pass@")))
    columns[5:5] = [("humaneval_sampled", k, f"HumanEval {k} (sampled)") for k in sampled]
    columns = [c for c in columns if any(c[1] in m.get(c[0], {}) for m in evaluation.values())]
    header = "| variant | " + " | ".join(f"{label}{_n(evaluation, s, k)}" for s, k, label in columns)
    lines = [header + " | tokens/s | peak MB | size MB |", "|" + " --- |" * (len(columns) + 4)]
    for name in VARIANTS:
        if name not in evaluation:
            continue
        m = evaluation[name]
        cells = [interval_cell(m[s][k]) if k in m.get(s, {}) else "-" for s, k, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['efficiency']['tokens_per_s']:.1f} | "
                     f"{m['efficiency']['peak_memory_mb']:.0f} | {m['efficiency']['artifact_mb']:.0f} |")
    return "\n".join(lines)


OUR_SECTIONS = ("ifeval", "humaneval", "humaneval_sampled", "leetcode", "explanation", "code_pairs", "judge",
                "efficiency")


def other_tasks_table(evaluation: dict[str, Any]) -> str:
    """Any further lm-eval task named in `evaluate.lm_eval_tasks`: one row per variant and metric."""
    lines = ["| task | metric | " + " | ".join(n for n in VARIANTS if n in evaluation) + " |",
             "|" + " --- |" * (2 + sum(n in evaluation for n in VARIANTS))]
    found = sorted({(section, metric) for m in evaluation.values() for section, metrics in m.items()
                    if section not in OUR_SECTIONS for metric in metrics if metric != "lm_eval"})
    for section, metric in found:
        cells = [interval_cell(evaluation[n][section][metric]) if metric in evaluation[n].get(section, {}) else "-"
                 for n in VARIANTS if n in evaluation]
        lines.append(f"| {section} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if found else "None named in `evaluate.lm_eval_tasks`."


def _quality_cell(metric: dict[str, Any]) -> str:
    if not metric["n"]:
        return "no passing solution"
    return f"{interval_cell(metric, scale=1.0, digits=2)} (n={metric['n']})"


def code_quality_table(evaluation: dict[str, Any]) -> str:
    """The seeds' quality goals, on passing LeetCode solutions only (n = how many passed)."""
    lines = ["| variant | runtime vs reference (CPU time ratio) | PEP 8 findings per 100 lines |", "| --- | --- | --- |"]
    for name in VARIANTS:
        leetcode = evaluation.get(name, {}).get("leetcode", {})
        if "runtime_ratio" not in leetcode:
            continue
        ratio, lint = leetcode["runtime_ratio"], leetcode["lint_per_100_lines"]
        lines.append(f"| {name} | {_quality_cell(ratio)} | {_quality_cell(lint)} |")
    return "\n".join(lines)


EXPLANATION_COLUMNS = (("bleu", "sacreBLEU"), ("rougeL", "ROUGE-L F"), ("bertscore_f1", "BERTScore F1"))


def explanation_table(evaluate: dict[str, Any]) -> str:
    """Each variant's code explanations against the references (all three scores x 100)."""
    scoring = evaluate.get("explanation", {})
    if not scoring.get("file"):
        return "Off (`evaluate.explanation.file: null`)."
    lines = ["| variant | " + " | ".join(label for _, label in EXPLANATION_COLUMNS) + " |",
             "| --- |" + " --- |" * len(EXPLANATION_COLUMNS)]
    for name in VARIANTS:
        scores = evaluate["variants"].get(name, {}).get("explanation")
        if scores:
            lines.append(f"| {name} | " + " | ".join(interval_cell(scores[metric]) for metric, _ in EXPLANATION_COLUMNS)
                         + " |")
    return (f"{scoring['snippets']} Python snippets of `{scoring['file']}`, each answer scored against its 1-2 "
            f"references, x 100. BERTScore: `{scoring['bertscore_encoder']}`, layer {scoring['bertscore_layer']}, "
            "not rescaled, so comparable only under the same encoder and layer (not to published roberta-large "
            "numbers).\n\n" + "\n".join(lines))


def code_pairs_table(evaluate: dict[str, Any]) -> str:
    """Each variant's preference for the efficient solution on the held-out code pairs."""
    if not evaluate.get("code_pairs"):
        return "Off (`preference.sources.code.heldout: 0` or `evaluate.code_pairs: false`)."
    lines = ["| variant | efficient more likely than slow [95% CI] | log-likelihood margin, nats [95% CI] |",
             "| --- | --- | --- |"]
    for name in VARIANTS:
        scores = evaluate["variants"].get(name, {}).get("code_pairs")
        if scores:
            lines.append(f"| {name} | {interval_cell(scores['acc'])} | "
                         f"{interval_cell(scores['margin'], scale=1.0, digits=1)} |")
    return (f"{evaluate['code_pairs']} held-out problems (`preference.sources.code.heldout`; no training pair and no "
            "SFT row holds them): each problem's reference solution against its correct but slow one, as the "
            "answer to the same prompt; accuracy in %, the margin summed over the answer's tokens.\n\n"
            + "\n".join(lines))


def reward_model_table(reward: dict[str, Any]) -> str:
    """The reward stage's pair accuracy: on the pairs it trained on, the held-out prompts' pairs and
    the held-out code pairs."""
    if not reward.get("enabled"):
        return "Off (`reward.enabled: false`); `dvc exp run -S reward.enabled=true` trains one."
    lines = ["| pairs | n | chosen scored above rejected, % [95% CI] | mean reward margin |", "| --- | --- | --- | --- |"]
    for key, label in (("train", "trained on"), ("heldout", "held out (unseen prompts)"),
                       ("heldout_code_pairs", "held-out code pairs (none trained on)")):
        if key in reward:
            margin = reward[key]["margin_mean"]
            lines.append(f"| {label} | {reward[key]['pairs']} | {interval_cell(reward[key]['accuracy'])} | "
                         f"{'n/a' if margin is None else f'{margin:.2f}'} |")
    return (f"TRL's RewardTrainer, {reward['steps']} steps on the preference pairs of all but the held-out "
            "prompts (`reward` in params.yaml); `models/reward` is the merged scorer "
            "`preference.sources.reward_model` can use.\n\n" + "\n".join(lines))


def differences_table(comparisons: dict[str, Any]) -> str:
    """Paired tests on the same items; a difference is called significant only when p < 0.05."""
    lines = ["| comparison | metric | difference [95% CI] | test | p | n | significant |", "|" + " --- |" * 7]
    for pair, tests in comparisons.items():
        for metric, t in tests.items():
            scale, digits, unit = (1.0, 3, "") if metric.endswith(RAW_UNIT_METRICS) else (100.0, 1, " pts")
            diff, low, high = (f"{scale * t[key]:+.{digits}f}" for key in ("diff", "ci_low", "ci_high"))
            lines.append(
                f"| {pair.replace('_vs_', ' vs ')} | {metric} | {diff}{unit} [{low}, {high}] | {t['test']} | "
                f"{t['p_value']:.3f} | {t['n']} | {'**yes**' if t['significant'] else 'no'} |"
            )
    return "\n".join(lines)


def instruction_types_table(instruction_types: dict[str, dict[str, Any]]) -> str:
    """Markdown table: held-out loose accuracy per instruction type for base, sft and aligned (in %)."""
    steps = [s for s in ("base", "sft", "aligned") if any(s in scores for scores in instruction_types.values())]
    lines = ["| instruction type | in preference training | n | " + " | ".join(steps) + " |",
             "| --- | --- | ---: |" + " --- |" * len(steps)]
    for kind, scores in instruction_types.items():
        cells = [interval_cell(scores[s], digits=0) if s in scores else "-" for s in steps]
        trained = "yes" if scores.get("in_preference_training") else "no"
        lines.append(f"| `{kind}` | {trained} | {scores['instructions']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compression_table(compress: dict[str, Any], evaluation: dict[str, Any]) -> str:
    """Size and speed against quality for the aligned model and its compressed variants."""
    lines = ["| variant | size MB | tokens/s | IFEval prompt loose | HumanEval pass@1 |", "| --- | --- | --- | --- | --- |"]
    for name in ("aligned", *compress.get("variants", {})):
        if name in evaluation:
            m = evaluation[name]
            lines.append(f"| {name} | {m['efficiency']['artifact_mb']:.0f} | {m['efficiency']['tokens_per_s']:.1f} | "
                         f"{interval_cell(m['ifeval']['prompt_level_loose'])} | {interval_cell(m['humaneval']['pass@1'])} |")
    return "\n".join(lines)


def peft_comparison_table(comparison: dict[str, Any]) -> str:
    """Seed #2's table: one row per fine-tuning method, all trained for the same number of steps."""
    lines = ["| method | trainable params | training time | eval loss | peak memory | generation | weights (saved dir) |",
             "|" + " --- |" * 7]
    for method, row in comparison["methods"].items():
        lines.append(
            f"| {method} | {row['trainable_params']:,} ({row['trainable_pct']:.3f}%) | {row['train_runtime_s']:.0f} s | "
            f"{_fmt(row['eval_loss'])} | {row['peak_memory_mb']:.0f} MB | {row['generation_tokens_per_s']:.1f} tok/s | "
            f"{row['weights_mb']:.2f} MB ({row['artifact_mb']:.1f} MB) |"
        )
    return "\n".join(lines)


def sample_answers(samples_dir: Path, task: str = "ifeval") -> list[dict[str, Any]]:
    """Per prompt of `task`, each variant's answer: [{'prompt': ..., 'answers': {variant: text}}]."""
    from tunelab.core.io import read_jsonl

    rows: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        path = samples_dir / f"{name}_{task}.jsonl"
        if path.is_file():
            for sample in read_jsonl(path):
                row = rows.setdefault(str(sample["id"]), {"prompt": sample["prompt"], "answers": {}})
                row["answers"][name] = sample["responses"][0]
    return list(rows.values())


def _one_line(text: str, limit: int = 400) -> str:
    text = text if len(text) <= limit else text[:limit] + " [...]"
    return html.escape(text, quote=False).replace("|", "&#124;").replace("\n", "<br>")


def side_by_side_markdown(samples: list[dict[str, Any]], count: int = 3) -> str:
    """The first `count` prompts, each with every variant's answer (cut at 400 characters)."""
    blocks = []
    for sample in samples[:count]:
        lines = [f"**Prompt:** {_one_line(sample['prompt'])}", "", "| variant | answer |", "| --- | --- |"]
        lines += [f"| {name} | {_one_line(answer)} |" for name, answer in sample["answers"].items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) if blocks else "No samples."


def side_by_side_html(samples: list[dict[str, Any]]) -> str:
    """Every prompt and every variant's full answer in one table (an MLflow artifact)."""
    names = [name for name in VARIANTS if any(name in s["answers"] for s in samples)]
    head = "".join(f"<th>{name}</th>" for name in names)
    body = "".join(
        f"<tr><td>{html.escape(s['prompt'])}</td>"
        + "".join(f"<td>{html.escape(s['answers'].get(name, ''))}</td>" for name in names) + "</tr>"
        for s in samples
    )
    style = ("table{border-collapse:collapse;font:13px sans-serif}td,th{border:1px solid #ccc;padding:6px;"
             "vertical-align:top;white-space:pre-wrap;max-width:28em}th{background:#eee}")
    return (f"<!doctype html><meta charset='utf-8'><title>Sample answers</title><style>{style}</style>"
            f"<table><tr><th>prompt</th>{head}</tr>{body}</table>")


def online_rl_samples(align: dict[str, Any]) -> str:
    """GRPO/RLOO: completions of the first and the last step with each reward, and how many the
    guard zeroed; empty for the offline methods."""
    samples = align.get("samples")
    if not samples:
        return ""
    blocks = [f"### What {align['method']} rewarded (first and last step)\n\n{samples['guarded_completions']} "
              "completions were zeroed by the guard (too short, or cut at the completion limit); curves in "
              "`figures/online_rl.png`."]
    for when in ("first", "last"):
        record = samples.get(when)
        if not record:
            continue
        names = list(record["rows"][0]["rewards"]) if record["rows"] else []
        lines = [f"**Step {record['step']}**", "", "| prompt | completion | " + " | ".join(names) + " |",
                 "|" + " --- |" * (len(names) + 2)]
        for row in record["rows"]:
            cells = ["-" if row["rewards"][n] is None else f"{row['rewards'][n]:.2f}" for n in names]
            lines.append(f"| {_one_line(row['prompt'], 160)} | {_one_line(row['completion'], 300)} | "
                         + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def sandbox_line(sandbox: dict[str, Any]) -> str:
    """What the evaluated model code ran under (docs/sandbox.md), loud when it was less than required."""
    if not sandbox.get("variants"):
        return "Sandbox: no model code was run."
    had = ", ".join(sandbox["protections"]) or "no protection at all"
    line = f"Sandbox: every program of model code ran under {had}."
    if sandbox.get("missing"):
        line += (f" **Weaker than required: {', '.join(sandbox['missing'])} missing** (sandbox.require was lowered or "
                 "the results come from another machine).")
    return line


def preference_summary(pref: dict) -> str:
    """The preference stage in one cell: pairs by source; the verifiable ones' prompts and margin
    when that source is on (a code-only study has neither)."""
    by_source = ", ".join(f"{name} {count}" for name, count in pref.get("pairs_by_source", {}).items() if count)
    verifiable = (f" from {pref['prompts']} prompts, mean margin {pref['margin_mean']:.2f}"
                  if "prompts" in pref else "")
    return f"{pref['pairs']} pairs{verifiable}" + (f" ({by_source})" if by_source else "")


def write_markdown(reports: dict[str, Any], figures: list[Path], samples: list[dict[str, Any]], out_path: Path) -> None:
    curate, sft, pref, align = reports["curate"], reports["sft"], reports["preference"], reports["align"]
    evaluate = reports["evaluate"]
    text = f"""# TuneLab study report

Alignment method: **{align['method']}**. Scores are percentages with 95% bootstrap intervals
over items; IFEval numbers are on the held-out verifiable-instruction set
({evaluate['ifeval_prompts']} prompts), HumanEval on {evaluate['humaneval_problems']} problems.

{results_table(evaluate['variants'])}

Judge: {evaluate['judge'].get('backend') or 'off'}; each prompt is judged in both answer orders
(win 1, tie 0.5, loss 0, averaged), so 50% means no preference.

{sandbox_line(evaluate.get('sandbox', {}))}

### Further lm-eval tasks

{other_tasks_table(evaluate['variants'])}

### Differences (paired tests on the same items)

McNemar's exact test for pass/fail scores; otherwise a paired bootstrap interval with a sign-flip
(permutation) p-value. 95% intervals. Differences
are in percentage points, except runtime ratio and lint findings per 100 lines (their own units).

{differences_table(evaluate.get('comparisons', {}))}

### Held-out accuracy by instruction type

Instruction-level loose accuracy, each type's instructions across all held-out prompts (n of them);
every type of lm-eval's IFEval registry that the held-out set draws from.

{instruction_types_table(evaluate.get('instruction_types', {}))}

### Code quality of passing LeetCode solutions

{code_quality_table(evaluate['variants'])}

### Code explanation (sacreBLEU, ROUGE-L, BERTScore)

{explanation_table(evaluate)}

### Held-out code pairs (efficient against slow)

{code_pairs_table(evaluate)}

### Reward model

{reward_model_table(reports.get('reward', {}))}

### Compression

{compression_table(reports.get('compress', {}), evaluate['variants'])}

### Sample answers (held-out instructions; all of them in `samples_side_by_side.html`)

{side_by_side_markdown(samples)}

## Fine-tuning methods compared (seed #2)

Each method trained on the curated data for {reports['peft_compare']['max_steps']} steps with the sft settings
(`peft_compare` in params.yaml); generation speed is greedy decoding of held-out prompts.

{peft_comparison_table(reports['peft_compare'])}

## Pipeline

| stage | key numbers |
| --- | --- |
| curate | {curate['input_rows']} generated -> {curate['kept_rows']} kept ({curate['train_rows']} train / {curate['val_rows']} val) |
| sft | {sft['method']}, train loss {sft['train_loss']:.3f}, eval loss {_fmt(sft['eval_loss'])}, {sft['steps']} steps, {sft['runtime_s']:.0f} s, {sft['trainable_params']:,} trainable ({sft['trainable_pct']:.2f}%), {sft['tokens_per_s']:.0f} tok/s |
| preference | {preference_summary(pref)} |
| align | {align['method']}, train loss {_fmt(align['train_loss'])}, {align['steps']} steps, {align['runtime_s']:.0f} s |

{online_rl_samples(align)}
Kept per source: {', '.join(f"{k} {v['kept']}/{v['input']}" for k, v in curate.get('per_source', {}).items())}.
Removed by curation filters: {', '.join(f"{k} {v}" for k, v in curate['removed'].items())}
(decontaminated against {curate.get('evaluation_texts', 0)} evaluation texts; details in `data_card.md`).

""" + "\n".join(f"![{p.stem}](figures/{p.name})" for p in figures) + "\n"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
