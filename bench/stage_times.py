"""Per-stage wall time from the log of a `dvc repro` / `dvc exp run`.

    python bench/logged.py repro.log -- dvc repro && python bench/stage_times.py repro.log

A stage starts at its "Running stage" line and ends where the next one starts; the last ends at
the log's last timestamp. bench/logged.py stamps every line and records the exit status; a plain
`make run 2>&1 | tee repro.log` log also works, with each stage starting at its first line that
Python logging stamped (so a stage's time then holds the next interpreter's start-up).
"""

from __future__ import annotations

import datetime
import re
import sys
from dataclasses import dataclass
from pathlib import Path

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:,(\d{3}))? ")
STAGE = re.compile(r"Running stage '([^']+)'")
STATUS = re.compile(r"bench: exit status (-?\d+)$")


@dataclass
class RunLog:
    stages: dict[str, float]  # seconds per stage run, in order
    wall_s: float | None  # first to last timestamp: the whole command under bench/logged.py
    status: int | None  # the exit status bench/logged.py recorded; None in a log without one


def read_log(lines: list[str]) -> RunLog:
    starts: list[tuple[str, datetime.datetime]] = []
    pending, first, last, status = None, None, None, None
    for line in lines:
        for part in line.split("\r"):  # tqdm redraws with carriage returns
            stamp = STAMP.match(part)
            found = STAGE.search(part)
            pending = found.group(1) if found else pending
            if not stamp:
                continue
            last = datetime.datetime.fromisoformat(stamp.group(1)) + datetime.timedelta(
                milliseconds=int(stamp.group(2) or 0))
            first = first or last
            if pending:
                starts.append((pending, last))
                pending = None
            ended = STATUS.search(part)
            status = int(ended.group(1)) if ended else status
    stages = {name: (end - start).total_seconds()
              for (name, start), (_, end) in zip(starts, starts[1:] + [("end", last)])}
    return RunLog(stages, (last - first).total_seconds() if first else None, status)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run = read_log(Path(sys.argv[1]).read_text(errors="replace").splitlines())
    if not run.stages:
        sys.exit(f"no timestamped stage output found in {sys.argv[1]}")
    print("| stage | wall time |\n| --- | --- |")
    for name, seconds in run.stages.items():
        print(f"| {name} | {seconds / 60:.1f} min ({seconds:.0f} s) |")
    print(f"| **whole command** | **{run.wall_s / 60:.1f} min ({run.wall_s:.0f} s)** |")
    if run.status:
        print(f"\nthe command failed: exit status {run.status}")


if __name__ == "__main__":
    main()
