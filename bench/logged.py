"""Run a command, teeing its output to a log with the wall-clock time on every line: the logs that
bench/stage_times.py reads (`make bench-pipeline` writes them).

    python bench/logged.py .tunelab/bench/repro.log -- dvc repro

The first line names the command, the last one its exit status, which the command's own status
also becomes.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path


def stamped(line: str) -> str:
    """`line` after the time in the format of Python logging's default asctime."""
    return f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S,%f}"[:-3] + f" {line}"


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit(__doc__)
    log_path, command = Path(sys.argv[1]), sys.argv[3:]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        def write(line: str) -> None:
            text = stamped(line)
            print(text, flush=True)
            log.write(text + "\n")
            log.flush()

        write(f"bench: running `{' '.join(command)}` in {os.getcwd()}")
        # Unbuffered children: a line is stamped when it is written, not when a buffer fills.
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace", env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in process.stdout:
            write(line.rstrip("\n"))
        status = process.wait()
        write(f"bench: exit status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
