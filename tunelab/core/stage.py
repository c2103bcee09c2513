"""What every stage entry point shares: logging, the one-line error contract, params loading."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from tunelab.core.config import (
    ConfigError,
    Study,
    as_dict,
    check_sections,
    load_section,
    read_params,
)
from tunelab.core.io import DISK_FULL

log = logging.getLogger("tunelab")

# Errors a user can fix (bad params, missing or corrupt inputs, a missing model): one clear line.
USER_ERRORS = (ConfigError, FileNotFoundError, ValueError, RuntimeError)

# Every top-level key of params.yaml: one per stage that has settings, plus `method`.
SECTIONS = ("method", "base", "generate", "curate", "sft", "peft_compare", "preference", "reward", "align",
            "compress", "evaluate", "tracking", "sandbox")


def parser(doc: str, *paths: str, resumable: str | None = None) -> argparse.ArgumentParser:
    """A parser with --params and one required `--<name> PATH` per name (dvc.yaml passes them).

    A `resumable` stage also gets --work-dir (default .tunelab/<resumable>): its partial work lives
    there, outside DVC's outputs (which DVC deletes before a run), so a killed run resumes from it.
    """
    argument_parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    argument_parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name in paths:
        argument_parser.add_argument(f"--{name}", required=True, type=Path)
    if resumable:
        default = Path(".tunelab") / resumable
        argument_parser.add_argument("--work-dir", type=Path, default=default,
                                     help=f"where partial work is kept until the stage finishes (default: {default})")
    return argument_parser


def load(params_path: str, section: str, cls: type) -> tuple[Any, Study]:
    """The typed section and the study (the validated `method` and every section); logs the resolved section."""
    params = read_params(params_path)
    check_sections(params, SECTIONS)
    study = Study(params.get("method"), params)
    config = load_section(params, section, cls)
    log.info("resolved %s config: %s", section, json.dumps(as_dict(config), sort_keys=True))
    return config, study


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage main; user errors and a full disk become one line on stderr and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        main(argv)
    except USER_ERRORS as err:
        fail(str(err))
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise  # anything else is a bug to see in full
        fail(f"no space left on the device holding {err.filename or 'the outputs'}; "
             "free some space there (or move the project to a larger disk) and re-run")


def fail(message: str) -> None:
    # A message from a library may span lines; the contract is one line a user can read.
    print("error: " + " ".join(line.strip() for line in message.splitlines() if line.strip()), file=sys.stderr)
    raise SystemExit(1) from None
