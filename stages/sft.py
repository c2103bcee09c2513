"""Supervised fine-tuning of the base model on the curated conversations (TRL SFTTrainer + LoRA).

    python -m stages.sft --model models/base --data data/curated --out models/sft \
        --metrics reports/sft.json
"""

import tempfile
from pathlib import Path

from tunelab import stage
from tunelab.io import read_jsonl, require_rows, write_json
from tunelab.sft import SFTSettings, train_sft


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "model", "data", "out", "metrics")
    args = parser.parse_args(argv)
    settings, _ = stage.load(args.params, "sft", SFTSettings)

    train = require_rows(read_jsonl(args.data / "train.jsonl"), str(args.data / "train.jsonl"))
    val = read_jsonl(args.data / "val.jsonl")
    with tempfile.TemporaryDirectory(prefix="tunelab-sft-") as work_dir:
        report = train_sft(args.model, train, val, settings, args.out, Path(work_dir))
    write_json(args.metrics, report)


if __name__ == "__main__":
    stage.run(main)
