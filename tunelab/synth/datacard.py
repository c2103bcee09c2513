"""The data card: what curation kept, where it came from, how long and how varied it is."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from tunelab.synth.dedup import words


def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams over all n-grams (Li et al., 2016): 1.0 means nothing repeats."""
    grams = [tuple(tokens[i : i + n]) for tokens in map(words, texts) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _turns(row: dict[str, Any], role: str) -> str:
    return "\n".join(m["content"] for m in row["messages"] if m["role"] == role)


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def length_figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = sorted({r["source"] for r in rows})
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for axis, role, title in ((axes[0], "user", "request length"), (axes[1], "assistant", "answer length")):
        data = [[len(words(_turns(r, role))) for r in rows if r["source"] == s] for s in sources]
        axis.hist(data, bins=20, stacked=True, label=sources)
        axis.set_title(f"Kept rows: {title}")
        axis.set_xlabel("words")
        axis.set_ylabel("rows")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_data_card(path: Path, kept: list[dict], report: dict[str, Any], examples: dict[str, list[dict]],
                    figure_path: Path | None) -> None:
    lines = ["# Data card", "",
             f"{report['input_rows']} generated rows in, {report['kept_rows']} kept "
             f"({report['train_rows']} train, {report['val_rows']} validation); "
             f"decontaminated against {report['evaluation_texts']} evaluation texts.", "",
             f"Answers cut at the teacher's token limit (not ended): {report['cut_at_length']['input']} generated, "
             f"{report['cut_at_length']['kept']} kept (`curate.drop_cut_answers: true` drops them).", "",
             "## Size per source", "", "| source | generated | kept | keep rate |", "| --- | ---: | ---: | ---: |"]
    for source, counts in report["per_source"].items():
        rate = counts["kept"] / counts["input"] if counts["input"] else 0.0
        lines.append(f"| {source} | {counts['input']} | {counts['kept']} | {rate:.0%} |")
    teachers = Counter(r.get("teacher", "unknown") for r in kept)
    lines += ["", "Kept rows per teacher: " + ", ".join(f"{t} {n}" for t, n in sorted(teachers.items())), ""]

    lines += ["## Lengths (words, kept rows)", "", "| source | requests: median [p10, p90] | answers: median [p10, p90] |",
              "| --- | --- | --- |"]
    for source in report["per_source"]:
        rows = [r for r in kept if r["source"] == source]
        if rows:
            cells = []
            for role in ("user", "assistant"):
                counts = sorted(len(words(_turns(r, role))) for r in rows)
                cuts = statistics.quantiles(counts, n=10, method="inclusive") if len(counts) > 1 else [counts[0]] * 9
                cells.append(f"{statistics.median(counts):.0f} [{cuts[0]:.0f}, {cuts[-1]:.0f}]")
            lines.append(f"| {source} | {cells[0]} | {cells[1]} |")
    if figure_path is not None:
        lines += ["", f"![lengths]({Path(figure_path).relative_to(path.parent).as_posix()})"]

    requests = [_turns(r, "user") for r in kept]
    answers = [_turns(r, "assistant") for r in kept]
    lines += ["", "## Diversity (distinct-n over kept rows)", "", "| text | distinct-1 | distinct-2 | distinct-3 |",
              "| --- | ---: | ---: | ---: |"]
    for name, texts in (("requests", requests), ("answers", answers)):
        lines.append(f"| {name} | " + " | ".join(f"{distinct_n(texts, n):.3f}" for n in (1, 2, 3)) + " |")

    lines += ["", "## Removed, per filter", "", "| filter | rows removed |", "| --- | ---: |"]
    lines += [f"| {name} | {count} |" for name, count in report["removed"].items()]
    lines += ["", "## Examples of removed rows", ""]
    for name, rows in examples.items():
        if rows:
            lines.append(f"**{name}**")
            lines.append("")
            lines += [f"- request: {_clip(_turns(r, 'user'))} — answer: {_clip(_turns(r, 'assistant'))}" for r in rows]
            lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")
