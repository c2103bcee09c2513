"""Align the SFT model on the preference pairs with the method named by top-level `method`.

    python -m stages.align --model models/base --sft models/sft --data data/preference \
        --out models/aligned --metrics reports/align.json
"""

import tempfile
from pathlib import Path

from tunelab import stage
from tunelab.align import AlignSettings, check_method, train_alignment
from tunelab.io import read_jsonl, require_rows, write_json


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "model", "sft", "data", "out", "metrics")
    args = parser.parse_args(argv)
    settings, params = stage.load(args.params, "align", AlignSettings)
    method = check_method(params.get("method"))

    pairs = require_rows(read_jsonl(args.data / "pairs.jsonl"), str(args.data / "pairs.jsonl"))
    with tempfile.TemporaryDirectory(prefix="tunelab-align-") as work_dir:
        report = train_alignment(method, args.model, args.sft, pairs, settings, args.out, Path(work_dir))
    write_json(args.metrics, report)


if __name__ == "__main__":
    stage.run(main)
