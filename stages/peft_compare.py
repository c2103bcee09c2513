"""Compare fine-tuning methods (seed #2: LoRA vs prompt tuning) on the curated data, one budget each.

    python -m stages.peft_compare --model models/base --data data/curated \
        --prompts data/seed/heldout_prompts.txt --metrics reports/peft_compare.json
"""

from tunelab.core import stage
from tunelab.core.config import load_section
from tunelab.core.io import read_jsonl, require_rows, write_json
from tunelab.synth.chatdata import CONVERSATION
from tunelab.tasks.instructions import read_base_prompts
from tunelab.train.peft_compare import PeftCompareSettings, compare_methods
from tunelab.train.sft import SFTSettings


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "model", "data", "prompts", "metrics")
    args = parser.parse_args(argv)
    config, study = stage.load(args.params, "peft_compare", PeftCompareSettings)
    sft = load_section(study.params, "sft", SFTSettings)

    train = require_rows(read_jsonl(args.data / "train.jsonl", CONVERSATION), str(args.data / "train.jsonl"))
    val = read_jsonl(args.data / "val.jsonl", CONVERSATION)
    rows = compare_methods(args.model, train, val, sft, config, read_base_prompts(args.prompts))
    write_json(args.metrics, {"max_steps": config.max_steps, "methods": {row["method"]: row for row in rows}})


if __name__ == "__main__":
    stage.run(main)
