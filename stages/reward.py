"""Train a reward model on the preference pairs (TRL's RewardTrainer); report its held-out pair accuracy.

    python -m stages.reward --model models/base --data data/preference --out models/reward \
        --metrics reports/reward.json

With `reward.enabled` false (the CPU default) the stage writes its report and a note in --out and
trains nothing. On: a LoRA adapter and a one-output scoring head on the base model learn the
Bradley-Terry loss on the pairs of most training prompts; reward.heldout_fraction of the prompts
(all their pairs) stay out, and reports/reward.json holds the accuracy on them (chosen scored above
rejected) with a bootstrap interval, and on the held-out code pairs when the preference stage wrote
them. models/reward is the merged sequence classifier preference.sources.reward_model can score
with (docs/methods.md#preference-sources says how, since a stage cannot feed the stage before it).
Checkpoints go to --work-dir: a killed run resumes from its last complete one.
"""

from tunelab.core import stage
from tunelab.core.io import read_jsonl, require_rows, write_json, written_whole
from tunelab.eval.stats import summarise
from tunelab.train.rewardmodel import PAIR_FIELDS, RewardModelSettings, train_reward_model


def with_accuracy(outcomes: dict, seed: int) -> dict:
    """A set of pairs' outcomes as its accuracy (chosen scored above rejected) with a bootstrap interval."""
    return {"pairs": outcomes["pairs"], "accuracy": summarise(outcomes["chosen_above_rejected"], seed=seed),
            "margin_mean": outcomes["margin_mean"]}


def main(argv: list[str] | None = None) -> None:
    args = stage.parser(__doc__, "model", "data", "out", "metrics", resumable="reward").parse_args(argv)
    settings, _ = stage.load(args.params, "reward", RewardModelSettings)
    if not settings.enabled:
        with written_whole(args.out) as out:  # DVC needs its output; the note says why it holds no model
            (out / "README.md").write_text("No reward model: reward.enabled is false "
                                           "(dvc exp run -S reward.enabled=true).\n")
        write_json(args.metrics, {"enabled": False})
        return
    pairs_path = args.data / "pairs.jsonl"
    pairs = require_rows(read_jsonl(pairs_path, PAIR_FIELDS), str(pairs_path))
    code_heldout = args.data / "code_heldout.jsonl"
    report = train_reward_model(args.model, pairs, settings, args.out, args.work_dir,
                                read_jsonl(code_heldout) if code_heldout.is_file() else None)
    for name in ("heldout", "train", "heldout_code_pairs"):
        if name in report:
            report[name] = with_accuracy(report[name], settings.seed)
    write_json(args.metrics, {"enabled": True, **report})


if __name__ == "__main__":
    stage.run(main)
