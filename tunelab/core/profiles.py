"""Turn a profile of params overrides (profiles/*.yaml) into `dvc exp run -S key=value` arguments.

    dvc exp run -n gpu $(python -m tunelab.core.profiles profiles/gpu.yaml)

Nested mappings become dotted keys, so a profile overrides only the keys it names; lists (such as
generate.teachers) replace the whole list. Every key must exist in params.yaml: a typo stops here
instead of becoming a new, ignored params key. Values are written as DVC reads them back (YAML)
with no quotes around them and no spaces in them: the shell does not remove quotes from an
unquoted `$(...)`, and splits it at every space.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from tunelab.core.config import ConfigError, read_params


def dvc_value(value: Any) -> str:
    """`value` as `-S key=` text that YAML reads back to it: a plain string as it is when YAML keeps
    it a string, anything else as compact JSON (JSON is YAML)."""
    if isinstance(value, str) and value and not any(c.isspace() for c in value) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value, separators=(",", ":"))


def overrides(profile: dict[str, Any], params: dict[str, Any], prefix: str = "") -> list[str]:
    arguments = []
    for key, value in profile.items():
        name = f"{prefix}{key}"
        if not isinstance(params, dict) or key not in params:
            raise ConfigError(f"profile key '{name}' is not in params.yaml")
        if isinstance(value, dict):
            arguments += overrides(value, params[key], f"{name}.")
        else:
            arguments.append(f"{name}={dvc_value(value)}")
    return arguments


def applied(profile: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """`params` with `profile`'s overrides applied, as `dvc exp run` would apply its arguments."""
    merged = json.loads(json.dumps(params))
    for argument in overrides(profile, params):
        name, value = argument.split("=", 1)
        *parents, key = name.split(".")
        section = merged
        for parent in parents:
            section = section[parent]
        section[key] = yaml.safe_load(value)  # as DVC parses a -S value
    return merged


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m tunelab.core.profiles PROFILE.yaml")
    try:
        arguments = overrides(read_params(argv[0]), read_params(Path("params.yaml")))
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    spaced = next((argument for argument in arguments if any(c.isspace() for c in argument)), None)
    if spaced:
        raise SystemExit(f"error: {spaced.split('=', 1)[0]}: its value holds whitespace, which the shell splits "
                         f"in $(...); leave it out of the profile and pass -S '{spaced}' yourself")
    print(" ".join(f"-S {argument}" for argument in arguments))


if __name__ == "__main__":
    main()
