"""Append-only shards with checkpoints, so a killed generation resumes where it stopped.

DVC deletes a stage's outputs before it runs, so partial work lives outside them, in a work
directory keyed by a fingerprint of everything that determines the rows (teacher, sampling,
prompts, seeds). Work is done in chunks; each chunk's rows are appended to `rows.jsonl`, flushed
to disk, and only then is `checkpoint.json` (chunks done, rows, byte offset) replaced atomically.
On resume, bytes past the checkpoint's offset belong to a chunk that never finished (a truncated
last record, or whole rows of an unfinished chunk): they are cut off and that chunk is redone.
Each chunk is seeded by its index alone, so a resumed run writes the same rows as an
uninterrupted one and never trains on a row twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunelab.core.io import write_json

log = logging.getLogger("tunelab")


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (config dicts, prompt lists, row ids)."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def directory_digest(*directories: str | Path) -> str:
    """A hash of every file's name and bytes under the directories (the models partial work came from)."""
    digest = hashlib.sha256()
    for directory in directories:
        for path in sorted(Path(directory).rglob("*")):
            if path.is_file():
                digest.update(path.name.encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class ShardProgress:
    resumed_rows: int = 0  # rows found complete on disk from an earlier, interrupted run
    generated_rows: int = 0  # rows this run produced
    dropped_partial_bytes: int = 0  # bytes of an unfinished chunk cut off on resume
    stale_discarded: bool = False  # partial work for other settings was thrown away
    chunks: list[int] = field(default_factory=list)  # chunk indices done by this run


class Shard:
    """One resumable job's rows: `<work_dir>/<name>/` for the given fingerprint."""

    def __init__(self, work_dir: Path, name: str, key: str):
        self.directory = Path(work_dir) / name
        self.key = key
        self.rows_path = self.directory / "rows.jsonl"
        self.checkpoint_path = self.directory / "checkpoint.json"
        self.progress = ShardProgress()

    def open(self) -> list[dict[str, Any]]:
        """Rows of completed chunks; starts fresh when the fingerprint differs."""
        checkpoint = self._read_checkpoint()
        if checkpoint is not None and checkpoint.get("key") != self.key:
            log.info("%s: settings changed since the partial run; discarding its work", self.directory)
            shutil.rmtree(self.directory)
            self.progress.stale_discarded = True
            checkpoint = None
        self.directory.mkdir(parents=True, exist_ok=True)
        if checkpoint is None:
            checkpoint = {"key": self.key, "chunks": 0, "rows": 0, "bytes": 0}
            self.rows_path.write_bytes(b"")
            write_json(self.checkpoint_path, checkpoint)
        self._checkpoint = checkpoint
        size = self.rows_path.stat().st_size if self.rows_path.exists() else 0
        if size < checkpoint["bytes"]:
            raise RuntimeError(f"{self.rows_path} is shorter than its checkpoint says; delete {self.directory}")
        if size > checkpoint["bytes"]:
            self.progress.dropped_partial_bytes = size - checkpoint["bytes"]
            log.info("%s: cutting %d bytes of an unfinished chunk", self.rows_path, self.progress.dropped_partial_bytes)
            with self.rows_path.open("r+b") as handle:
                handle.truncate(checkpoint["bytes"])
        rows = [json.loads(line) for line in self.rows_path.read_text().splitlines() if line.strip()]
        if len(rows) != checkpoint["rows"]:
            raise RuntimeError(f"{self.rows_path} holds {len(rows)} rows, its checkpoint {checkpoint['rows']}; "
                               f"delete {self.directory}")
        self.progress.resumed_rows = len(rows)
        return rows

    @property
    def chunks_done(self) -> int:
        return self._checkpoint["chunks"]

    def append_chunk(self, rows: list[dict[str, Any]]) -> None:
        """Append one chunk's rows durably, then advance the checkpoint past them."""
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
        with self.rows_path.open("ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        self.progress.chunks.append(self._checkpoint["chunks"])
        self._checkpoint = {
            "key": self.key,
            "chunks": self._checkpoint["chunks"] + 1,
            "rows": self._checkpoint["rows"] + len(rows),
            "bytes": self._checkpoint["bytes"] + len(data),
        }
        write_json(self.checkpoint_path, self._checkpoint)
        self.progress.generated_rows += len(rows)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _read_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.is_file():
            if self.directory.exists():  # killed before the first checkpoint was written
                shutil.rmtree(self.directory)
            return None
        try:
            return json.loads(self.checkpoint_path.read_text())
        except json.JSONDecodeError:  # cannot happen with atomic replace, but never trust it blindly
            shutil.rmtree(self.directory)
            return None


def fill(
    shard: Shard,
    target: int,
    make_chunk: Callable[[int, list[dict[str, Any]], int], list[dict[str, Any]]],
    max_chunks: int,
    what: str,
) -> list[dict[str, Any]]:
    """Run `make_chunk(chunk_index, rows_so_far, rows_missing)` until `target` rows exist.

    Exactly `target` rows come back; `rows_missing` lets the last chunk ask for no more than needed.
    `make_chunk` must depend only on its arguments (seed it by chunk index), so the chunks a
    resumed run redoes come out as they would have. A chunk may return fewer rows than asked
    (filtered candidates); `max_chunks` bounds the attempts and names the problem when hit.
    """
    rows = shard.open()
    while len(rows) < target:
        index = shard.chunks_done
        if index >= max_chunks:
            raise RuntimeError(
                f"{what}: only {len(rows)} of {target} usable rows after {index} chunks; the teacher's "
                "output is being filtered out (lower the count or loosen the filters)"
            )
        missing = target - len(rows)
        chunk = make_chunk(index, rows, missing)[:missing]
        shard.append_chunk(chunk)
        rows.extend(chunk)
    return rows[:target]
