"""Generate synthetic conversations: Magpie, Self-Instruct, code problems and imported data.

    python -m stages.generate --out data/generated --metrics reports/generate.json

Partial work lives in --work-dir (outside DVC's outputs, which DVC deletes before a run), so a
killed run resumes from its last checkpoint; it is removed once the outputs are written.
"""

from pathlib import Path

import torch

from tunelab import stage
from tunelab.io import write_json, write_jsonl, written_whole
from tunelab.synthesis import GenerateConfig, generate_all


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "out", "metrics")
    parser.add_argument("--work-dir", type=Path, default=Path(".tunelab/generate"),
                        help="where partial work is checkpointed (default: .tunelab/generate)")
    args = parser.parse_args(argv)
    config, _ = stage.load(args.params, "generate", GenerateConfig)

    torch.manual_seed(config.seed)
    outputs, report, synthesis = generate_all(config, args.work_dir)
    with written_whole(args.out) as out:
        for method, rows in outputs.items():
            write_jsonl(out / f"{method}.jsonl", rows)
    write_json(args.metrics, report)
    synthesis.finish()


if __name__ == "__main__":
    stage.run(main)
