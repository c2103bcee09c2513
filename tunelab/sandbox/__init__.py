"""Run untrusted (model-written) Python, and check completions against tests, in confined processes.

- `runner`: the isolation engine: namespaces, cgroups, rlimits; `run_program` and `isolation()`.
- `harness`: the check program, `check_completion` / `check_samples`, `load_problems`.
- `confine`: the small interpreter every program starts under; it confines itself, then execs.
- `__main__`: `python -m tunelab.sandbox run|check` (see docs/sandbox.md).
"""
