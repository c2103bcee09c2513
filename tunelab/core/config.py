"""Typed, strictly validated params sections.

Each stage reads exactly one section of params.yaml into a dataclass. An unknown key, a value of
the wrong type, or a value outside its allowed set stops the stage with one line naming the key
and what is allowed, before any output is written.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A params problem the user must fix; its message names the key and what is allowed."""


# What top-level `method` may name: the offline preference methods and the online RL methods (grpo,
# rloo) tunelab.train.align trains with, or none (the SFT model passes through).
ALIGNMENT_METHODS = ("dpo", "ipo", "orpo", "kto", "simpo", "grpo", "rloo", "none")


@dataclasses.dataclass(frozen=True)
class Study:
    """What every stage knows of the whole params file: the top-level `method`, checked here once,
    and every section as read (the report stage logs them all)."""

    method: str
    params: dict[str, Any]

    def __post_init__(self) -> None:
        if self.method not in ALIGNMENT_METHODS:
            raise ConfigError(f"method: '{self.method}' is not allowed (allowed: {', '.join(ALIGNMENT_METHODS)})")


def read_params(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path} (run from the project root, or pass --params PATH)")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        # PyYAML's own message spans several lines; the contract is one line naming where to look.
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem}); fix the indentation or quoting there") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def load_section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """Build `cls` from `params[name]`, rejecting unknown keys and wrong types."""
    if name not in params:
        raise ConfigError(f"params has no section '{name}'{did_you_mean(name, params)}")
    return build(cls, params[name], where=name)


def check_sections(params: dict[str, Any], known: tuple[str, ...]) -> None:
    """A top-level key no stage reads is a typo, never a setting to ignore."""
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(
            f"params: unknown section '{unknown[0]}' (allowed: {', '.join(known)}){did_you_mean(unknown[0], known)}"
        )


def did_you_mean(key: str, candidates: Any) -> str:
    """'; did you mean 'max_steps'?' for a near miss among `candidates`, else ''."""
    close = difflib.get_close_matches(key, [str(c) for c in candidates], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def build(cls: type[T], raw: Any, where: str) -> T:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(fields))})"
                          f"{did_you_mean(unknown[0], fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        values[key] = _coerce(hints[key], value, f"{where}.{key}")
    try:
        return cls(**values)
    except TypeError as err:  # a required field without default is missing
        raise ConfigError(f"{where}: {err}") from err
    except ConfigError as err:
        raise ConfigError(_qualified(str(err), where, fields)) from None


def _qualified(message: str, where: str, fields: dict[str, Any]) -> str:
    """A section shared by several stages (optim, lora) names its keys bare ('max_steps: ...');
    name them where they sit in params ('sft.optim.max_steps: ...')."""
    first = message.replace(":", " ").split(" ", 1)[0]
    return f"{where}.{message}" if first in fields else message


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if hint is Any:  # free-form (e.g. an lm-eval task override): its consumer validates it
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(str(a) for a in args)
            raise ConfigError(f"{where}: '{value}' is not allowed (allowed: {allowed})")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if hint is float:
        # YAML reads 5e-5 as a string; accept ints and numeric strings for floats.
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint} at {where}")


def check_range(where: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """Raise ConfigError when value lies outside [low, high]; used by __post_init__ checks."""
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ConfigError(f"{where}: {value} is outside {bounds}")


def as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
