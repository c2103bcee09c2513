"""Build preference pairs: K on-policy SFT answers per verifiable-instruction prompt, best vs worst
(or the worst against its minimal revision), and the validation split the align stage scores on.

    python -m stages.preference --model models/base --sft models/sft \
        --prompts data/seed/preference_prompts.txt --out data/preference --metrics reports/preference.json

Sampled answers are checkpointed chunk by chunk in --work-dir (outside DVC's outputs, which DVC
deletes before a run), so a killed run resumes where it stopped; it is removed once the outputs
are written. Outputs: prompts.jsonl (training prompts), pairs.jsonl, and validation.json (the
validation prompts, the SFT model's greedy answers to them, their scores and the decoding used).
"""


import torch

from tunelab.core import stage
from tunelab.core.io import write_json, write_jsonl, written_whole
from tunelab.core.models import load_tokenizer, load_variant
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


def main(argv: list[str] | None = None) -> None:
    args = stage.parser(__doc__, "model", "sft", "prompts", "out", "metrics", resumable="preference").parse_args(argv)
    config, _ = stage.load(args.params, "preference", PreferenceSettings)

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
    answers, stats, partial = sample_answers(model, tokenizer, prompt_rows, config, args.work_dir, [args.model, args.sft])
    pairs, report = make_pairs(prompt_rows, answers, config.min_margin, config.revise)
    if not pairs:
        raise ValueError(f"no preference pairs survived (report: {report}); raise samples_per_prompt or lower min_margin")
    report["tokens_per_s"] = stats.tokens_per_s  # of the chunks this run sampled
    report["resumed_prompts"] = partial.progress.resumed_rows
    validation = validation_answers(model, tokenizer, validation_rows, config.validation_sampling)
    # Base beside SFT on the same prompts: the number to choose SFT settings on (never the held-out set).
    base = validation_answers(load_variant(args.model, []), tokenizer, validation_rows, config.validation_sampling)
    report["validation"] = {"prompts": len(validation_rows), "base": base["accuracy"], "sft": validation["accuracy"],
                            **win_loss("sft", "base", validation["prompt_loose"], base["prompt_loose"])}
    with written_whole(args.out) as out:  # every file or none
        write_jsonl(out / "prompts.jsonl", prompt_rows)
        write_jsonl(out / "pairs.jsonl", pairs)
        write_json(out / "validation.json", validation)
    write_json(args.metrics, report)
    partial.remove()


if __name__ == "__main__":
    stage.run(main)
