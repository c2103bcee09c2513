"""Small file helpers: JSONL and JSON written atomically so a killed stage never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a malformed line raises ValueError naming the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (did the upstream stage run?)")
    rows = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object per line")
            rows.append(row)
    return rows


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    _atomic_write(Path(path), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_json(path: str | Path, data: Any) -> None:
    _atomic_write(Path(path), json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rows of numbers as CSV (DVC plots read it); columns are the union of the rows' keys."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [",".join(columns)] + [",".join(str(row.get(column, "")) for column in columns) for row in rows]
    _atomic_write(Path(path), "\n".join(lines) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (did the upstream stage run?)")
    return json.loads(path.read_text())


def require_rows(rows: list, what: str) -> list:
    """Stop with one clear line when an input that must have rows is empty."""
    if not rows:
        raise ValueError(f"{what} is empty: nothing to work on (check the upstream stage's report)")
    return rows


def load_records(path: str, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a local JSON/JSONL file or a hub dataset id, through `datasets`.

    A path-like name that does not exist is an error here, never a hub lookup.
    """
    from datasets import load_dataset

    if Path(path).exists():
        if Path(path).stat().st_size == 0:
            raise ValueError(f"{path} is empty")
        dataset = load_dataset("json", data_files=str(path), split="train")
    else:
        if path.startswith((".", "/")) or path.endswith((".json", ".jsonl")):
            raise FileNotFoundError(f"data file {path} does not exist")
        dataset = load_dataset(path, split=split)
    return [dict(row) for row in dataset]
