"""Align the SFT model on the preference pairs with the method named by top-level `method`.

    python -m stages.align --model models/base --sft models/sft --data data/preference \
        --out models/aligned --metrics reports/align.json --plots reports/plots/align_steps.csv

`method` is dpo, ipo, orpo, kto or simpo (trained on data/preference/pairs.jsonl), grpo or rloo
(online RL on the preference stage's training prompts, data/preference/prompts.jsonl, and the
code problems of align.rl, with verifiable rewards), or none (passes the SFT model through).
Checkpoints go to
--work-dir, outside DVC's outputs: a killed run resumes from its last complete checkpoint. With
`align.launch.processes` > 1 the stage re-runs itself under torchrun. Once trained, the aligned
model answers the preference stage's validation prompts (data/preference/validation.json) and
align.json's `validation` holds its scores beside the SFT model's: choose settings on those.
"""


from tunelab.core import stage
from tunelab.core.io import read_json, read_jsonl, require_rows, write_csv, write_json
from tunelab.core.launch import relaunch
from tunelab.train.align import (
    ONLINE_METHODS,
    PAIR,
    PROMPT,
    AlignSettings,
    plot_rows,
    score_on_validation,
    train_alignment,
)


def main(argv: list[str] | None = None) -> None:
    args = stage.parser(__doc__, "model", "sft", "data", "out", "metrics", "plots", resumable="align").parse_args(argv)
    settings, study = stage.load(args.params, "align", AlignSettings)
    if relaunch(settings.launch, "stages.align", argv):
        return

    pairs = require_rows(read_jsonl(args.data / "pairs.jsonl", PAIR), str(args.data / "pairs.jsonl"))
    prompts = None
    if study.method in ONLINE_METHODS:
        prompts = require_rows(read_jsonl(args.data / "prompts.jsonl", PROMPT), str(args.data / "prompts.jsonl"))
    report = train_alignment(study.method, args.model, args.sft, pairs, settings, args.out, args.work_dir,
                             prompts=prompts)
    if report is not None:  # only the main process writes
        validation = read_json(args.data / "validation.json")
        report["validation"] = score_on_validation(args.model, args.sft, args.out, validation)
        write_json(args.metrics, report)
        write_csv(args.plots, plot_rows(report["history"]))


if __name__ == "__main__":
    stage.run(main)
