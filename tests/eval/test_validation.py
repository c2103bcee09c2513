"""`tunelab.eval.validation`: models scored on the preference stage's validation prompts (and its
training prompts, for choosing SFT settings), with the paired test against the first variant."""

from __future__ import annotations

import pytest

from tunelab.core.io import read_json, write_json, write_jsonl
from tunelab.eval import validation
from tunelab.tasks.instructions import InstructionMix, build_ifeval_rows, score_response

SAMPLING = {"max_new_tokens": 6, "temperature": 0.0, "top_p": 1.0, "repetition_penalty": 1.0, "batch_size": 4}


@pytest.fixture
def preference_dir(tmp_path):
    mix = InstructionMix(instruction_ids=["punctuation:no_comma", "change_case:english_lowercase"], max_per_prompt=1)
    rows = build_ifeval_rows([f"Describe town number {n}." for n in range(5)], mix, seed=0)
    out = tmp_path / "preference"
    write_json(out / "validation.json", {"rows": rows[:2], "sampling": SAMPLING})
    write_jsonl(out / "prompts.jsonl", rows[2:])
    return out


@pytest.fixture(scope="module")
def random_lora(tiny_model_dir, tmp_path_factory):
    """An adapter with random B matrices, so the adapted model answers differently from base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("validation-lora")
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config).save_pretrained(out)
    return out


def test_variants_are_scored_on_the_chosen_prompts_and_tested_against_the_first(
        preference_dir, tiny_model_dir, random_lora, tmp_path, capsys):
    out = tmp_path / "scores.json"
    validation.main(["--model", str(tiny_model_dir), "--preference", str(preference_dir), "--variant", "base=",
                     "--variant", f"adapted={random_lora}", "--prompts", "validation+training", "--out", str(out)])
    scores = read_json(out)
    assert scores["rows"] == 5 and scores["prompts"] == "validation+training"
    base, adapted = scores["variants"]["base"], scores["variants"]["adapted"]
    assert base["adapters"] == [] and adapted["adapters"] == [str(random_lora)]
    assert base["answers"] != adapted["answers"]  # the adapter reached the model that answered
    rows = validation.validation_rows(preference_dir, "validation+training")[0]
    for result in (base, adapted):  # each verdict is IFEval's own on the answer the file keeps
        assert result["prompt_loose"] == [float(score_response(row, answer)["prompt_loose"])
                                          for row, answer in zip(rows, result["answers"])]
    wins = sum(a > b for a, b in zip(adapted["prompt_loose"], base["prompt_loose"]))
    losses = sum(a < b for a, b in zip(adapted["prompt_loose"], base["prompt_loose"]))
    assert adapted["vs_base"]["wins"] == wins and adapted["vs_base"]["losses"] == losses
    assert "vs_base" not in base
    assert "adapted: prompt loose" in capsys.readouterr().out
    only_validation = validation.validation_rows(preference_dir, "validation")[0]
    assert [row["key"] for row in only_validation] == [row["key"] for row in rows[:2]]


def test_a_variant_without_a_name_is_refused(preference_dir, tiny_model_dir):
    with pytest.raises(SystemExit, match="write NAME=ADAPTER"):
        validation.main(["--model", str(tiny_model_dir), "--preference", str(preference_dir),
                         "--variant", "models/sft"])
