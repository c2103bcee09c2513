"""Generate synthetic conversations: Magpie, Self-Instruct, code problems and imported data.

    python -m stages.generate --out data/generated --metrics reports/generate.json

Partial work lives in --work-dir (outside DVC's outputs, which DVC deletes before a run), so a
killed run resumes from its last checkpoint; it is removed once the outputs are written.
"""


import torch

from tunelab.core import stage
from tunelab.core.io import write_json, write_jsonl, written_whole
from tunelab.sandbox.protections import require_for_stage
from tunelab.synth.synthesis import GenerateSettings, generate_all


def main(argv: list[str] | None = None) -> None:
    args = stage.parser(__doc__, "out", "metrics", resumable="generate").parse_args(argv)
    config, study = stage.load(args.params, "generate", GenerateSettings)
    runs_model_code = config.code.count and config.code.verify and config.code.answer == "teacher"
    sandbox = require_for_stage(study.params) if runs_model_code else None

    torch.manual_seed(config.seed)
    outputs, report, synthesis = generate_all(config, args.work_dir)
    with written_whole(args.out) as out:
        for method, rows in outputs.items():
            write_jsonl(out / f"{method}.jsonl", rows)
    write_json(args.metrics, {**report, "sandbox": sandbox} if sandbox else report)
    synthesis.finish()


if __name__ == "__main__":
    stage.run(main)
