"""Compress the aligned model: int8 dynamic quantization and L1 unstructured pruning.

    python -m stages.compress --model models/base --sft models/sft --aligned models/aligned \
        --out models/compressed --metrics reports/compress.json

Writes models/compressed/int8/ and models/compressed/pruned/, each loadable with
`tunelab.train.compress.load_compressed`; `compress.int8: false` or `compress.prune_sparsity: 0` skips one.
"""


from tunelab.core import stage
from tunelab.core.io import write_json
from tunelab.train.compress import CompressSettings, compress_aligned


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "model", "sft", "aligned", "out", "metrics")
    args = parser.parse_args(argv)
    config, _ = stage.load(args.params, "compress", CompressSettings)
    report = compress_aligned(args.model, [args.sft, args.aligned], config, args.out)
    write_json(args.metrics, report)


if __name__ == "__main__":
    stage.run(main)
