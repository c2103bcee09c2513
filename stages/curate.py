"""Filter, deduplicate and split the generated conversations.

    python -m stages.curate --data data/generated/magpie.jsonl --out data/curated \
        --metrics reports/curate.json
"""


from tunelab import stage
from tunelab.curation import CurateConfig, curate
from tunelab.io import read_jsonl, require_rows, write_json, write_jsonl


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "data", "out", "metrics")
    args = parser.parse_args(argv)
    config, _ = stage.load(args.params, "curate", CurateConfig)

    rows = require_rows(read_jsonl(args.data), str(args.data))
    train, val, report = curate(rows, config)
    if not train:
        raise ValueError(f"curation kept no training rows out of {len(rows)}; removed: {report['removed']}")
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "val.jsonl", val)
    write_json(args.metrics, report)


if __name__ == "__main__":
    stage.run(main)
