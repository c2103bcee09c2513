"""Draw the held-out verifiable-instruction set that every variant is evaluated on.

    python -m stages.heldout --prompts data/seed/heldout_prompts.txt --preference data/preference \
        --out data/heldout

The held-out base prompts are disjoint from every training prompt, and with --preference their
instruction combinations are too: no held-out prompt asks for a mix that a preference training
prompt asked for (a set given as evaluate.heldout_file is counted, not redrawn). Writes
ifeval.jsonl (IFEval's format) and summary.json (its size and that count, for evaluate.json), and
code_pairs.jsonl: the preference stage's held-out code pairs (preference.sources.code.heldout),
checked against every training pair's problem.
"""

from pathlib import Path

from tunelab.core import stage
from tunelab.core.io import (
    read_jsonl,
    require_rows,
    write_json,
    write_jsonl,
    written_whole,
)
from tunelab.eval.evaluate import EvaluateSettings
from tunelab.tasks.instructions import (
    build_ifeval_rows,
    instruction_mix,
    read_base_prompts,
    validate_ifeval_rows,
)


def training_instruction_mixes(preference_dir: Path) -> set[frozenset[str]]:
    """Instruction combinations of the preference stage's training prompts (validation ones may recur:
    nothing is trained on them)."""
    return {instruction_mix(row) for row in read_jsonl(preference_dir / "prompts.jsonl")}


def heldout_code_pairs(preference_dir: Path) -> list[dict]:
    """The preference stage's held-out code pairs; a problem that also has a training pair stops the stage."""
    path = preference_dir / "code_heldout.jsonl"
    if not path.is_file():
        return []
    rows = read_jsonl(path)
    trained = {pair.get("key") for pair in read_jsonl(preference_dir / "pairs.jsonl")}
    shared = sorted({row["task_id"] for row in rows} & trained)
    if shared:
        raise ValueError(f"{path}: problem {shared[0]} is held out and also has a training pair; "
                         "re-run the preference stage (dvc repro preference)")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "prompts", "out")
    parser.add_argument("--preference", type=Path, default=None,
                        help="the preference stage's output: held-out prompts avoid every instruction combination "
                             "its training prompts use")
    args = parser.parse_args(argv)
    config, _ = stage.load(args.params, "evaluate", EvaluateSettings)

    training_mixes = training_instruction_mixes(args.preference) if args.preference else set()
    code_pairs = heldout_code_pairs(args.preference) if args.preference else []
    if config.heldout_file:
        rows = validate_ifeval_rows(require_rows(read_jsonl(config.heldout_file), config.heldout_file),
                                    config.heldout_file)
    else:
        rows = build_ifeval_rows(read_base_prompts(args.prompts), config.heldout, config.heldout_seed,
                                 avoid_mixes=training_mixes)
    with written_whole(args.out) as out:
        write_jsonl(out / "ifeval.jsonl", rows)
        if code_pairs:
            write_jsonl(out / "code_pairs.jsonl", code_pairs)
        write_json(out / "summary.json", {
            "prompts": len(rows),
            "prompts_with_a_training_mix": sum(instruction_mix(row) in training_mixes for row in rows),
            "code_pairs": len(code_pairs),
        })


if __name__ == "__main__":
    stage.run(main)
