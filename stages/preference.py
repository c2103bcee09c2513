"""Build preference pairs from every source in preference.sources, and the validation split the
align stage scores on:
- verifiable: K on-policy SFT answers per verifiable-instruction prompt, best vs worst (or the
  worst against its minimal revision);
- code: code problems' solutions run in the sandbox, correct over failing, fast over slow, tidy
  over untidy (tunelab.train.codepairs), and the held-out code pairs evaluate scores;
- reward_model and judge: K SFT answers to instructions of the curated SFT data, best over worst by
  a reward model's scores, or the pair a judge prefers in both orders (tunelab.train.scoredpairs).

    python -m stages.preference --model models/base --sft models/sft --sft-data data/curated \
        --prompts data/seed/preference_prompts.txt --out data/preference --metrics reports/preference.json

Sampled answers are checkpointed chunk by chunk in --work-dir (outside DVC's outputs, which DVC
deletes before a run), so a killed run resumes where it stopped; it is removed once the outputs
are written. Outputs: prompts.jsonl (training prompts), pairs.jsonl (every source's, each row with
its `source`), validation.json (the validation prompts, the SFT model's greedy answers to them,
their scores and the decoding used) and, with code.heldout > 0, code_heldout.jsonl (the heldout
stage publishes it). reports/preference.json counts pairs by source.
"""

from pathlib import Path


import torch

from tunelab.core import stage
from tunelab.core.io import read_jsonl, write_json, write_jsonl, written_whole
from tunelab.core.models import load_tokenizer, load_variant
from tunelab.sandbox.protections import require_for_stage
from tunelab.tasks.codeproblems import load_sources
from tunelab.tasks.instructions import (
    build_ifeval_rows,
    instruction_mix,
    read_base_prompts,
)
from tunelab.train.preference import (
    PreferenceSettings,
    make_pairs,
    sample_answers,
    split_base_prompts,
    validation_answers,
    win_loss,
)
from tunelab.train.codepairs import heldout_rows, make_code_pairs, sample_solutions, split_problems
from tunelab.train.scoredpairs import ScoredSources

SOURCE_FAMILIES = ("verifiable", "code", "reward_model", "judge")


def source_family(source: str) -> str:
    """verifiable, code, reward_model or judge: a pair's `source` up to its first slash, IFEval's pairs
    being the ones every other family is not."""
    family = source.split("/", 1)[0]
    return family if family in SOURCE_FAMILIES else "verifiable"


def problems_in_sft_data(sft_data: Path | None, task_ids: list[str]) -> set[str]:
    """The code problems the SFT data holds a row for (its rows' ids end with the problem's task_id)."""
    if sft_data is None:
        return set()
    row_ids = [row.get("id", "") for path in sorted(Path(sft_data).glob("*.jsonl")) for row in read_jsonl(path)]
    return {task_id for task_id in task_ids if any(row_id.endswith(task_id) for row_id in row_ids)}


def main(argv: list[str] | None = None) -> None:
    parser = stage.parser(__doc__, "model", "sft", "prompts", "out", "metrics", resumable="preference")
    parser.add_argument("--sft-data", type=Path, default=None,
                        help="the curated SFT data: no code problem it holds is held out, and the "
                        "reward_model and judge sources draw their instructions from it")
    args = parser.parse_args(argv)
    config, study = stage.load(args.params, "preference", PreferenceSettings)
    code = config.sources.code
    # Model-written code runs only with code pairs on (sampled solutions); held-out pairs run the problems' own.
    sandbox = require_for_stage(study.params) if code.count and code.samples_per_problem else None
    code_train, code_heldout, heldout_pairs = [], [], []
    if code.count or code.heldout:  # problems are checked, and held-out ones run, before any model loads
        problems = load_sources(code.problems)
        seen = problems_in_sft_data(args.sft_data, [p["task_id"] for p in problems])
        code_train, code_heldout = split_problems(problems, seen, code.heldout, code.count, code.seed)
        heldout_pairs = heldout_rows(code_heldout, code)
    scored_sources = ScoredSources(config.sources, args.sft_data)  # checked before any model loads

    train_bases, validation_bases = split_base_prompts(
        read_base_prompts(args.prompts), config.validation_fraction, config.seed)
    prompt_rows = build_ifeval_rows(train_bases, config.instructions, config.seed)
    # Validation prompts avoid the training prompts' instruction combinations, as the held-out ones do.
    validation_rows = build_ifeval_rows(validation_bases, config.instructions, config.seed + 1,
                                        key_offset=len(prompt_rows),
                                        avoid_mixes={instruction_mix(row) for row in prompt_rows})
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(args.model)
    model = load_variant(args.model, [args.sft])
    pairs, report, shards = [], {}, []
    if config.sources.verifiable:
        answers, stats, partial = sample_answers(model, tokenizer, prompt_rows, config, args.work_dir,
                                                 [args.model, args.sft])
        pairs, report = make_pairs(prompt_rows, answers, config.min_margin, config.revise)
        report["tokens_per_s"] = stats.tokens_per_s  # of the chunks this run sampled
        report["resumed_prompts"] = partial.progress.resumed_rows
        shards.append(partial)
    if code_train:
        solutions, partial = sample_solutions(model, tokenizer, code_train, code, config.sampling_seed, args.work_dir,
                                              [args.model, args.sft])
        code_pairs, report["code"] = make_code_pairs(code_train, solutions, code)
        pairs += code_pairs
        shards.append(partial)
    scored, scored_report, scored_shards = scored_sources.pairs(model, tokenizer, config.sampling_seed,
                                                                args.work_dir, [args.model, args.sft])
    pairs += scored
    report.update(scored_report)
    shards += scored_shards
    if not pairs:
        raise ValueError(f"no preference pairs survived (report: {report}); raise samples_per_prompt or lower "
                         "min_margin, or turn on another source in preference.sources")
    report["pairs"] = len(pairs)
    report["pairs_by_source"] = {family: sum(source_family(p["source"]) == family for p in pairs)
                                 for family in SOURCE_FAMILIES}
    report["code_heldout_pairs"] = len(heldout_pairs)
    if sandbox:
        report["sandbox"] = sandbox
    validation = validation_answers(model, tokenizer, validation_rows, config.validation_sampling)
    # Base beside SFT on the same prompts: the number to choose SFT settings on (never the held-out set).
    base = validation_answers(load_variant(args.model, []), tokenizer, validation_rows, config.validation_sampling)
    report["validation"] = {"prompts": len(validation_rows), "base": base["accuracy"], "sft": validation["accuracy"],
                            **win_loss("sft", "base", validation["prompt_loose"], base["prompt_loose"])}
    with written_whole(args.out) as out:  # every file or none
        write_jsonl(out / "prompts.jsonl", prompt_rows)
        write_jsonl(out / "pairs.jsonl", pairs)
        write_json(out / "validation.json", validation)
        if heldout_pairs:
            write_jsonl(out / "code_heldout.jsonl", heldout_pairs)
    write_json(args.metrics, report)
    for partial in shards:
        partial.remove()


if __name__ == "__main__":
    stage.run(main)
