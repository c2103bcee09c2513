"""Align the SFT model on the preference pairs with the method named by top-level `method`.

    python -m stages.align --model models/base --sft models/sft --data data/preference \
        --out models/aligned --metrics reports/align.json --plots reports/plots/align_steps.csv

`method` is dpo, ipo, orpo, kto, simpo or none (passes the SFT model through). Checkpoints go to
--work-dir, outside DVC's outputs: a killed run resumes from its last complete checkpoint. With
`align.launch.processes` > 1 the stage re-runs itself under torchrun. Once trained, the aligned
model answers the preference stage's validation prompts (data/preference/validation.json) and
align.json's `validation` holds its scores beside the SFT model's: choose settings on those.
"""

from pathlib import Path

from tunelab import stage
from tunelab.align import PAIR, AlignSettings, check_method, score_on_validation, train_alignment
from tunelab.io import read_json, read_jsonl, require_rows, write_csv, write_json
from tunelab.launch import relaunch


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "model", "sft", "data", "out", "metrics", "plots")
    parser.add_argument("--work-dir", type=Path, default=Path(".tunelab/align"),
                        help="where checkpoints are kept until training finishes (default: .tunelab/align)")
    args = parser.parse_args(argv)
    settings, params = stage.load(args.params, "align", AlignSettings)
    method = check_method(params.get("method"))
    if relaunch(settings.launch, "stages.align", argv):
        return

    pairs = require_rows(read_jsonl(args.data / "pairs.jsonl", PAIR), str(args.data / "pairs.jsonl"))
    report = train_alignment(method, args.model, args.sft, pairs, settings, args.out, args.work_dir)
    if report is not None:  # only the main process writes
        validation = read_json(args.data / "validation.json")
        report["validation"] = score_on_validation(args.model, args.sft, args.out, validation)
        write_json(args.metrics, report)
        write_csv(args.plots, report["history"])


if __name__ == "__main__":
    stage.run(main)
