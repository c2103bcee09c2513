"""`evaluate.heldout_file`: a user's own IFEval-format file is the held-out set every variant is scored on.

The heldout stage's `main()` runs with the file set in params (and the default seed prompts still
passed as --prompts, as dvc.yaml does), then its output goes through `build_tasks` and
`evaluate_variant` (real lm-eval on the tiny model), as the evaluate_<variant> stages run them.
Each prompt's instructions are picked so that their verdict on any short sampled text of the random
model is known: a made-up forbidden word always passes, a response wrapped in double quotes never
does. So the per-item scores show that the user's instructions and arguments were the ones checked.
"""

from __future__ import annotations

from tests.conftest import REPO, write_params
from tunelab.core.io import read_json, read_jsonl, write_jsonl
from tunelab.eval.evaluate import (
    EvaluateSettings,
    Variant,
    build_tasks,
    evaluate_variant,
)

ABSENT_WORD = {"forbidden_words": ["zqxjvortle"]}  # in no text the tiny model writes in 8 tokens
USER_ROWS = [
    {"key": 9001, "prompt": "Write a limerick about a lighthouse keeper named Ostrander.",
     "instruction_id_list": ["keywords:forbidden_words"], "kwargs": [ABSENT_WORD]},
    {"key": 9002, "prompt": "Describe the smell of rain on hot asphalt to a friend in Lisbon.",
     "instruction_id_list": ["startend:quotation"], "kwargs": [{}]},
    {"key": 9003, "prompt": "List three uses for an old bicycle tyre in a garden.",
     "instruction_id_list": ["keywords:forbidden_words", "startend:quotation"], "kwargs": [ABSENT_WORD, {}]},
]


def test_a_users_heldout_file_is_what_every_variant_is_scored_on(params_copy, tiny_model_dir, tmp_path):
    from stages import heldout as heldout_stage
    from tunelab.core.config import load_section

    user_file = tmp_path / "my_ifeval.jsonl"
    write_jsonl(user_file, USER_ROWS)
    preference = tmp_path / "preference"  # one training prompt asked for the quotation mix alone
    write_jsonl(preference / "prompts.jsonl", [{"key": 1, "prompt": "Say hi.", "instruction_id_list":
                                                ["startend:quotation"], "kwargs": [{}]}])
    params_copy["evaluate"].update(heldout_file=str(user_file), humaneval_limit=1, batch_size=4)
    # Sampled, so the random model writes tokens rather than its greedy blank lines (which fail every check).
    params_copy["evaluate"]["ifeval_sampling"].update(max_new_tokens=8, temperature=1.0, top_p=1.0)
    params_copy["evaluate"]["code_sampling"]["max_new_tokens"] = 4
    params_copy["evaluate"]["explanation"]["file"] = None  # not what this test is about
    params = write_params(tmp_path / "params.yaml", params_copy)
    out = tmp_path / "heldout"

    heldout_stage.main(["--params", str(params), "--prompts", str(REPO / "data/seed/heldout_prompts.txt"),
                        "--preference", str(preference), "--out", str(out)])

    assert read_jsonl(out / "ifeval.jsonl") == USER_ROWS  # the file as given: not redrawn, nothing added
    # No code_heldout.jsonl in this preference folder, so no held-out code pairs are published.
    assert read_json(out / "summary.json") == {"prompts": 3, "prompts_with_a_training_mix": 1, "code_pairs": 0}
    assert not (out / "code_pairs.jsonl").exists()

    config = load_section(params_copy, "evaluate", EvaluateSettings)
    tasks = build_tasks(config, str(out / "ifeval.jsonl"), str(tiny_model_dir))  # what stages.evaluate_variant passes
    result = evaluate_variant(Variant("base", [], str(tiny_model_dir)), str(tiny_model_dir), tasks, config)

    samples = result["samples"]["ifeval"]
    assert [(s["id"], s["prompt"]) for s in samples] == [(str(r["key"]), r["prompt"]) for r in USER_ROWS]
    defaults = set((REPO / "data/seed/heldout_prompts.txt").read_text().splitlines())
    assert not any(line in s["prompt"] for s in samples for line in defaults)
    scores = result["scores"]["ifeval"]
    assert [float(v) for v in scores["prompt_level_strict"]] == [1.0, 0.0, 0.0], [s["responses"] for s in samples]
    assert [[float(v) for v in item] for item in scores["inst_level_strict"]] == [[1.0], [0.0], [1.0, 0.0]]
    metrics = result["metrics"]["ifeval"]
    assert metrics["prompt_level_loose"]["n"] == 3 and metrics["inst_level_loose"]["n"] == 4
