"""Generate instruction/response conversations with Magpie, the base model as teacher.

    python -m stages.generate --model models/base --out data/generated/magpie.jsonl \
        --metrics reports/generate.json
"""


import torch

from tunelab import stage
from tunelab.io import write_json, write_jsonl
from tunelab.magpie import GenerateConfig, magpie
from tunelab.models import load_tokenizer, load_variant


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "model", "out", "metrics")
    args = parser.parse_args(argv)
    config, _ = stage.load(args.params, "generate", GenerateConfig)

    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(args.model)
    model = load_variant(args.model)
    rows, stats = magpie(model, tokenizer, config, teacher_name=str(args.model))
    write_jsonl(args.out, rows)
    write_json(args.metrics, stats)


if __name__ == "__main__":
    stage.run(main)
