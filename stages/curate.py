"""Filter, decontaminate, deduplicate and split the generated conversations; write the data card.

    python -m stages.curate --data data/generated --out data/curated --metrics reports/curate.json \
        --card reports/data_card.md --figure reports/data_card_lengths.png
"""

from tunelab.core import stage
from tunelab.core.io import (
    read_jsonl,
    require_rows,
    write_json,
    write_jsonl,
    written_whole,
)
from tunelab.synth.chatdata import CONVERSATION
from tunelab.synth.curation import CurateSettings, curate, evaluation_texts
from tunelab.synth.datacard import length_figure, write_data_card


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "data", "out", "metrics", "card", "figure")
    args = parser.parse_args(argv)
    config, _ = stage.load(args.params, "curate", CurateSettings)

    files = sorted(args.data.glob("*.jsonl")) if args.data.is_dir() else [args.data]
    if not files:
        raise FileNotFoundError(f"{args.data} holds no .jsonl files (did the generate stage run?)")
    rows = require_rows([row for path in files for row in read_jsonl(path, CONVERSATION)], str(args.data))
    train, val, report, examples = curate(rows, config, evaluation_texts(config.decontaminate))
    if not train:
        removed = {name: count for name, count in report["removed"].items() if count}
        raise ValueError(f"curation kept no training rows out of {len(rows)} (removed: {removed}); loosen those "
                         "curate filters in params.yaml or generate more rows")
    with written_whole(args.out) as out:
        write_jsonl(out / "train.jsonl", train)
        write_jsonl(out / "val.jsonl", val)
    length_figure(train + val, args.figure)
    write_data_card(args.card, train + val, report, examples, args.figure)
    write_json(args.metrics, report)


if __name__ == "__main__":
    stage.run(main)
