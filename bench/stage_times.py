"""Per-stage wall time from the log of a `dvc repro` / `make run`.

    make run 2>&1 | tee repro.log && python bench/stage_times.py repro.log

Each stage's first log line carries a timestamp; a stage's time is the gap to the next stage's
first line (so it includes the next interpreter's start-up), and the last stage ends at its last
timestamped line.
"""

from __future__ import annotations

import datetime
import re
import sys
from pathlib import Path

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ ")
STAGE = re.compile(r"Running stage '(\w+)'")


def stage_times(lines: list[str]) -> dict[str, float]:
    starts: list[tuple[str, datetime.datetime]] = []
    current, last_stamp = None, None
    for line in lines:
        for part in line.split("\r"):
            found = STAGE.search(part)
            if found:
                current = found.group(1)
                continue
            stamp = STAMP.match(part)
            if stamp:
                last_stamp = datetime.datetime.fromisoformat(stamp.group(1))
                if current and (not starts or starts[-1][0] != current):
                    starts.append((current, last_stamp))
    times = {}
    for (name, start), (_, end) in zip(starts, starts[1:] + [("end", last_stamp)]):
        times[name] = (end - start).total_seconds()
    return times


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    times = stage_times(Path(sys.argv[1]).read_text(errors="replace").splitlines())
    if not times:
        sys.exit(f"no timestamped stage output found in {sys.argv[1]}")
    print("| stage | wall time |\n| --- | --- |")
    for name, seconds in times.items():
        print(f"| {name} | {seconds / 60:.1f} min ({seconds:.0f} s) |")
    total = sum(times.values())
    print(f"| **total** | **{total / 60:.1f} min ({total:.0f} s)** |")


if __name__ == "__main__":
    main()
