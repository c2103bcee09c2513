"""Resumable training: checkpoints that survive a kill (the final output appears whole, through
`tunelab.core.io.written_whole`).

Two facts shape this module. Transformers writes `checkpoint-N/` file by file, so a kill can leave
one half written; and DVC deletes a stage's outputs before running it, so checkpoints cannot live
there. Checkpoints therefore go to a persisted work directory (`.tunelab/<stage>` by default,
git-ignored), and a checkpoint counts only once a `tunelab_complete.json` marker has been written
into it atomically, after the trainer finished saving everything (weights, optimizer, scheduler,
RNG states, trainer state). On a re-run, incomplete checkpoints are deleted and training resumes
from the newest complete one. A fingerprint of the config, data, starting weights and training
code guards against resuming someone else's run: when it differs, the old checkpoints are dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunelab.core.io import write_json
from tunelab.core.resumable import directory_digest

log = logging.getLogger("tunelab")

MARKER = "tunelab_complete.json"
FINGERPRINT = "fingerprint.json"
PREFIX = "checkpoint-"


def training_key(config: dict[str, Any], rows: list[dict[str, Any]], model_dirs: list[str | Path],
                 code_files: list[Path]) -> str:
    """A hash of everything that decides the trained weights: the config, the rows, the starting
    weights and the training code the caller names. Resume only when all of it matches."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    digest.update(json.dumps(rows, sort_keys=True).encode())
    digest.update(directory_digest(*model_dirs).encode())
    for path in (*code_files, Path(__file__)):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(PREFIX):])


class CheckpointDir:
    """The persisted directory a trainer saves its checkpoints in, for one fingerprinted run."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = Path(root)
        self.key = key

    def prepare(self, main_process: bool = True) -> str | None:
        """Drop stale and incomplete checkpoints; the newest complete one to resume from, or None.

        Under DDP only the main process deletes. The others only read, and they can never pick a
        stale checkpoint: the main process writes the new fingerprint after deleting the old ones.
        """
        stored = self.root / FINGERPRINT
        matches = stored.is_file() and json.loads(stored.read_text()).get("key") == self.key
        if main_process:
            if self.root.exists() and not matches:
                log.info("checkpoints in %s come from another config, data or model; starting afresh", self.root)
                shutil.rmtree(self.root)
            self.root.mkdir(parents=True, exist_ok=True)
            for path in self._checkpoints():
                if not (path / MARKER).is_file():
                    log.info("removing incomplete checkpoint %s (killed while it was written)", path)
                    shutil.rmtree(path)
            write_json(stored, {"key": self.key})
        elif not matches:
            return None
        complete = [path for path in self._checkpoints() if (path / MARKER).is_file()]
        if not complete:
            return None
        log.info("resuming from %s", complete[-1])
        return str(complete[-1])

    def _checkpoints(self) -> list[Path]:
        return sorted((p for p in self.root.glob(f"{PREFIX}*") if p.is_dir()), key=checkpoint_step)

    def mark_complete(self, step: int) -> None:
        """checkpoint-`step` is fully saved: mark it, and drop the older ones it supersedes."""
        newest = self.root / f"{PREFIX}{step}"
        write_json(newest / MARKER, {"step": step, "key": self.key})
        for path in self._checkpoints():
            if path != newest:
                shutil.rmtree(path, ignore_errors=True)

    def finish(self) -> None:
        """Training ended and its output is written: the checkpoints have served their purpose."""
        shutil.rmtree(self.root, ignore_errors=True)


class MarkCompleteCheckpoints(TrainerCallback):
    """After the trainer saved checkpoint-N in full, mark it complete and prune older ones.

    `save_total_limit` stays unset: the trainer's own rotation runs before this callback and could
    delete the last complete checkpoint while the newest one is not yet marked.
    """

    def __init__(self, directory: CheckpointDir) -> None:
        self.directory = directory

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its RNG state before the checkpoint counts
        if state.is_world_process_zero:
            self.directory.mark_complete(state.global_step)
