"""Compare fine-tuning methods (seed #2: LoRA vs prompt tuning) on the curated data, one budget each.

    python -m stages.peft_compare --model models/base --data data/curated \
        --prompts data/seed/heldout_prompts.txt --metrics reports/peft_compare.json
"""

from tunelab import stage
from tunelab.chatdata import CONVERSATION
from tunelab.config import load_section
from tunelab.instructions import read_base_prompts
from tunelab.io import read_jsonl, require_rows, write_json
from tunelab.peft_compare import PeftCompareConfig, compare_methods
from tunelab.sft import SFTSettings


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "model", "data", "prompts", "metrics")
    args = parser.parse_args(argv)
    config, params = stage.load(args.params, "peft_compare", PeftCompareConfig)
    sft = load_section(params, "sft", SFTSettings)

    train = require_rows(read_jsonl(args.data / "train.jsonl", CONVERSATION), str(args.data / "train.jsonl"))
    val = read_jsonl(args.data / "val.jsonl", CONVERSATION)
    rows = compare_methods(args.model, train, val, sft, config, read_base_prompts(args.prompts))
    write_json(args.metrics, {"max_steps": config.max_steps, "methods": {row["method"]: row for row in rows}})


if __name__ == "__main__":
    stage.run(main)
