"""What every benchmark family shares: the Figure record, its target, medians, the run context,
the size flags that `--quick` shrinks, and the table in docs/performance.md.

A figure is one measured number against one baseline measured in the same run (or none), with the
issue's target. `ratio` is always value / baseline: above 1 is faster for rates, slower for times.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

# --quick stands in a small value for every size flag left unset: {dest: (full, quick)}.
SIZES: dict[str, tuple[Any, Any]] = {}


def size_flag(group: Any, flag: str, full: Any, quick: Any, help: str, type: Callable = int) -> None:
    """A size knob whose default depends on --quick; an explicit value wins in both modes."""
    dest = flag.lstrip("-").replace("-", "_")
    SIZES[dest] = (full, quick)
    group.add_argument(flag, type=type, default=None, help=f"{help} (default: {full}; --quick: {quick})")


def apply_sizes(args: argparse.Namespace) -> None:
    for dest, (full, quick) in SIZES.items():
        if getattr(args, dest) is None:
            setattr(args, dest, quick if args.quick else full)


@dataclass
class Target:
    text: str  # as the issue states it
    on: str  # "value" or "ratio": which number the threshold applies to
    op: str  # "<" or ">="
    threshold: float

    def met(self, number: float | None) -> bool | None:
        if number is None:
            return None
        return number < self.threshold if self.op == "<" else number >= self.threshold


@dataclass
class Figure:
    name: str
    value: float | None  # None: not measured here, `note` says why
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None  # value / baseline unless given (e.g. a median of per-repeat ratios)
    target: Target | None = None
    samples: list[float] = field(default_factory=list)  # every repeat of value
    baseline_samples: list[float] = field(default_factory=list)
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    family: str = ""  # set by bench/run.py

    def __post_init__(self) -> None:
        if self.ratio is None and self.value is not None and self.baseline:
            self.ratio = self.value / self.baseline

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.target.met(self.ratio if self.target.on == "ratio" else self.value)

    def as_dict(self) -> dict[str, Any]:
        target = None if self.target is None else {**self.target.__dict__, "met": self.met}
        return {"family": self.family, "name": self.name, "value": self.value, "unit": self.unit,
                "baseline": self.baseline, "baseline_name": self.baseline_name, "ratio": self.ratio, "target": target,
                "met": self.met, "samples": self.samples, "baseline_samples": self.baseline_samples, "note": self.note,
                "details": self.details}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Figure":
        """A figure as as_dict wrote it (bench/run.py --merge reads earlier runs' figures back)."""
        fields = {k: v for k, v in data.items() if k not in ("met", "target")}
        target = data.get("target")
        return cls(**fields, target=Target(**{k: v for k, v in target.items() if k != "met"}) if target else None)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Context:
    """What every family reads: the repository measured, its params, sizes, and a scratch directory."""

    repo: Path
    params_path: Path
    model: Path  # the base model dir; built from `base` params into the scratch dir when absent
    work: Path  # scratch: the built base model, trained adapters, server logs
    threads: int
    quick: bool
    seed: int

    @cached_property
    def params(self) -> dict[str, Any]:
        from tunelab.core.config import read_params

        return read_params(self.params_path)

    def section(self, name: str, cls: type) -> Any:
        """A typed params section, validated as its stage validates it."""
        from tunelab.core.config import load_section

        return load_section(self.params, name, cls)

    def path(self, relative: str | Path) -> Path:
        return self.repo / relative

    @cached_property
    def base_dir(self) -> Path:
        """models/base of the measured repo, else the `base` params' model built once into the scratch dir."""
        import logging

        from tunelab.core.models import BaseSettings, materialise_base

        if (self.model / "config.json").is_file():
            return self.model
        built = self.work / "base"
        if not (built / "config.json").is_file():
            logging.getLogger("bench").info("%s holds no model: building the base model into %s", self.model, built)
            materialise_base(self.section("base", BaseSettings), built)
        return built


def number(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{value:.1f} %"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f} {unit}"


def markdown_table(figures: list[Figure]) -> str:
    lines = ["| figure | TuneLab | baseline | ratio | target | met | how |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for figure in figures:
        baseline = "—" if figure.baseline is None and not figure.baseline_name else (
            f"{number(figure.baseline, figure.unit)} ({figure.baseline_name})" if figure.baseline is not None
            else f"n/a ({figure.baseline_name})")
        # Three significant digits, so a ratio just over a threshold (0.404 against < 0.40) does not
        # print as if it met it.
        ratio = "—" if figure.ratio is None else f"{figure.ratio:.3g}x"
        target = figure.target.text if figure.target else "—"
        met = {None: "—", True: "yes", False: "**no**"}[figure.met]
        how = figure.note.replace("|", "/")
        lines.append(f"| {figure.name} | {number(figure.value, figure.unit)} | {baseline} | {ratio} | {target} | {met} "
                     f"| {how} |")
    return "\n".join(lines)
