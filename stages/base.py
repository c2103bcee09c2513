"""Materialise the base model as safetensors + tokenizer + chat template.

    python -m stages.base --out models/base --metrics reports/base.json
"""


from tunelab.core import stage
from tunelab.core.io import write_json
from tunelab.core.models import BaseSettings, materialise_base


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "out", "metrics")
    args = parser.parse_args(argv)
    config, _ = stage.load(args.params, "base", BaseSettings)
    info = materialise_base(config, args.out)
    write_json(args.metrics, info)


if __name__ == "__main__":
    stage.run(main)
