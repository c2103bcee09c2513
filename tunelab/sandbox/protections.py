"""The protections a sandboxed program can run under, which of them this machine gives, and the
requirement that stops a stage before any model code runs when one of them is missing.

`sandbox.require` in params.yaml (and `--require` on `python -m tunelab.sandbox`) names the
protections a run needs; `promised` stands for every one the documentation promises to this
caller (docs/sandbox.md). A machine that lacks one fails closed: `require` raises with one line
naming what is missing, why, and the fix. What a run had is recorded with its results
(`record`), so a number produced under weaker isolation is visibly so.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

from tunelab.core.config import ConfigError, load_section
from tunelab.sandbox.runner import PROTECTIONS, WRAPPER_ENV, Isolation, isolation

Protection = Literal["network", "filesystem", "process-limit", "caller-unreachable", "promised"]

_FIX = (f"run where user namespaces are allowed, set {WRAPPER_ENV}=bubblewrap (docs/sandbox.md), or lower "
        "sandbox.require knowingly (params.yaml, or --require)")


class SandboxUnavailable(RuntimeError):
    """This machine cannot give the protections a run requires; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class SandboxSettings:
    """params.yaml `sandbox`: what every run of model-written code must be protected by."""

    require: list[Protection] = dataclasses.field(default_factory=lambda: ["promised"])


def promised(found: Isolation) -> list[str]:
    """What docs/sandbox.md promises this caller: everything, except that a non-root caller's
    programs run under its own uid, so without a wrapper nothing keeps them from its processes."""
    return [name for name in PROTECTIONS
            if name != "caller-unreachable" or os.geteuid() == 0 or found.wrapper]


def required(names: list[str], found: Isolation) -> list[str]:
    """`names` with `promised` spelled out, in PROTECTIONS' order."""
    wanted = set(names) | (set(promised(found)) if "promised" in names else set())
    return [name for name in PROTECTIONS if name in wanted]


def _why(name: str, found: Isolation) -> str:
    """Why `found` lacks protection `name`: the probe's own words where it has them."""
    tried = f" (the probe program said: {found.weaker_because})" if found.weaker_because else ""
    if name == "network" and found.network:
        return "Unix sockets stay open: seccomp is missing on this machine or architecture"
    flag = {"network": "--unshare-net", "filesystem": "--ro-bind / /", "caller-unreachable": "--unshare-pid"}
    if found.wrapper and name in flag:
        return f"the probe program saw none under {WRAPPER_ENV} (does it pass {flag[name]}?)"
    if name == "process-limit":
        return ("no pids cgroup could be made or joined, and the kernel exempts root from RLIMIT_NPROC "
                "(give the container a writable cgroup)")
    if name == "caller-unreachable":
        return "only a root caller can give each run a uid of its own" + tried
    return "the sandbox could not make the namespaces it needs" + tried


def missing(names: list[str], found: Isolation | None = None) -> list[tuple[str, str]]:
    """(protection, why this machine lacks it) for each required one it lacks."""
    found = found or isolation()
    have = set(found.protections)
    return [(name, _why(name, found)) for name in required(names, found) if name not in have]


def require(names: list[str]) -> Isolation:
    """This machine's isolation, if it gives every protection in `names`; else SandboxUnavailable
    with one line naming each missing protection, why, and the fix."""
    for name in names:
        if name not in PROTECTIONS and name != "promised":
            raise ConfigError(f"sandbox.require: '{name}' is not a protection "
                              f"(allowed: {', '.join(PROTECTIONS)}, promised)")
    found = isolation()
    lacking = missing(names, found)
    if lacking:
        said = "; ".join(f"{name}: {why}" for name, why in lacking)
        raise SandboxUnavailable(f"the sandbox cannot give what sandbox.require asks for, so no model code ran. "
                                 f"Missing {said}. Fix: {_FIX}")
    return found


def require_for_stage(params: dict[str, Any]) -> dict[str, Any]:
    """For a stage about to run model code: params' `sandbox.require` checked against this
    machine (SandboxUnavailable if it falls short), and the record to keep with the results."""
    settings = load_section(params, "sandbox", SandboxSettings)
    return record(settings.require, require(settings.require))


def record(names: list[str], found: Isolation | None = None) -> dict[str, Any]:
    """What model code ran under, for results files, reports and MLflow tags."""
    found = found or isolation()
    return {"protections": found.protections, "required": required(names, found),
            "wrapper": " ".join(found.wrapper), "process_limit": found.process_limit,
            "memory_cgroup": found.memory_cgroup_parent is not None}
