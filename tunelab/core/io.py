"""Small file helpers: JSONL and JSON written atomically so a killed stage never leaves half a file,
and multi-file outputs that appear whole or not at all."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
MISSING_HINT = "run the stage that writes it (dvc repro), or fix the path"
BAD_ROW_HINT = "fix or remove that line, or re-run the stage that wrote the file"


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Read a JSONL file of objects holding the `required` fields; a bad line raises ValueError
    naming the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {MISSING_HINT}")
    rows = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg}); {BAD_ROW_HINT}") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object per line; {BAD_ROW_HINT}")
            missing = [name for name in required if name not in row]
            if missing:
                raise ValueError(f"{path}:{number}: no '{missing[0]}' field (every row needs "
                                 f"{', '.join(required)}); {BAD_ROW_HINT}")
            rows.append(row)
    return rows


def is_disk_full(err: BaseException) -> bool:
    # safetensors reports a full disk as SafetensorError("... No space left on device (os error 28)").
    return getattr(err, "errno", None) in DISK_FULL or os.strerror(errno.ENOSPC) in str(err)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # a failed write() names no file: name it
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


@contextmanager
def written_whole(out_dir: str | Path) -> Iterator[Path]:
    """A fresh sibling directory to write a multi-file output into. It replaces `out_dir` in one
    rename when the block finishes; on an error it is removed and `out_dir` (a previous good
    output, if any) is left exactly as it was."""
    out_dir = Path(out_dir)
    partial = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException as err:
        shutil.rmtree(partial, ignore_errors=True)
        if is_disk_full(err):  # name the output, not a file inside the partial directory
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir)) from err
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)


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
        raise FileNotFoundError(f"{path} does not exist; {MISSING_HINT}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); re-run the stage that writes it") from err


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
