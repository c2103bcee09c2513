"""Supervised fine-tuning of the base model on the curated conversations (TRL SFTTrainer).

    python -m stages.sft --model models/base --data data/curated --out models/sft \
        --metrics reports/sft.json --plots reports/plots/sft_steps.csv

`sft.peft` picks LoRA, QLoRA, DoRA, prompt tuning or full fine-tuning. Checkpoints go to
--work-dir (outside DVC's outputs, which DVC deletes before a run): a killed run resumes from its
last complete checkpoint. With `sft.launch.processes` > 1 the stage re-runs itself under torchrun.
"""


from tunelab.core import stage
from tunelab.core.io import read_jsonl, require_rows, write_csv, write_json
from tunelab.core.launch import relaunch
from tunelab.synth.chatdata import CONVERSATION
from tunelab.train.sft import SFTSettings, train_sft


def main(argv: list[str] | None = None) -> None:
    args = stage.parser(__doc__, "model", "data", "out", "metrics", "plots", resumable="sft").parse_args(argv)
    settings, _ = stage.load(args.params, "sft", SFTSettings)
    if relaunch(settings.launch, "stages.sft", argv):
        return

    train = require_rows(read_jsonl(args.data / "train.jsonl", CONVERSATION), str(args.data / "train.jsonl"))
    val = read_jsonl(args.data / "val.jsonl", CONVERSATION)
    report = train_sft(args.model, train, val, settings, args.out, args.work_dir)
    if report is not None:  # only the main process writes
        write_json(args.metrics, report)
        write_csv(args.plots, report["history"])


if __name__ == "__main__":
    stage.run(main)
