"""The reward_model and judge preference sources, and the reward model the reward stage trains, on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import free_port
from tunelab.core.config import ConfigError
from tunelab.core.io import read_jsonl, write_jsonl
from tunelab.synth.judge import Judge, JudgeSettings, LocalJudge, check_ready
from tunelab.train.rewardmodel import (
    RewardModel,
    RewardModelSettings,
    split_pairs_by_prompt,
    train_reward_model,
)
from tunelab.train.scoredpairs import (
    JudgePairSettings,
    RewardModelPairSettings,
    ScoredSources,
    judge_pairs,
    reward_model_pairs,
    sft_instructions,
)

PROMPTS = ["Name a colour.", "Say something kind.", "Count to three."]
ANSWERS = [["Blue.", "Red, like a fire truck.", "green"], ["You did well today.", "ok", "Thanks!"],
           ["1, 2, 3.", "one two three", "3 2 1"]]


def classifier_from(model_dir: Path, out: Path, num_labels: int) -> Path:
    """The tiny Llama with a fresh, seeded scoring head: a real sequence classifier."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_reward_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return classifier_from(tiny_model_dir, tmp_path_factory.mktemp("tiny-reward"), 1)


def test_reward_model_pairs_take_the_best_and_worst_answer_by_reward(tiny_reward_dir):
    scorer = RewardModel(str(tiny_reward_dir), batch_size=4)
    one_by_one = RewardModel(str(tiny_reward_dir), batch_size=1)  # padding must not change a score
    settings = RewardModelPairSettings(count=3, model=str(tiny_reward_dir), min_margin=0.0)

    pairs, report = reward_model_pairs(PROMPTS, ANSWERS, scorer, settings)

    assert len(pairs) == 3 and report["pairs"] == 3
    for pair, prompt, candidates in zip(pairs, PROMPTS, ANSWERS):
        user = [{"role": "user", "content": prompt}]
        rewards = one_by_one.score([user] * len(candidates),
                                   [[{"role": "assistant", "content": a}] for a in candidates])
        best, worst = candidates[rewards.index(max(rewards))], candidates[rewards.index(min(rewards))]
        assert pair["chosen"][0]["content"] == best and pair["rejected"][0]["content"] == worst
        assert pair["score_chosen"] == pytest.approx(max(rewards), abs=1e-4)
        assert pair["source"] == f"reward_model/{tiny_reward_dir.name}" and pair["prompt"] == user

    wide = RewardModelPairSettings(count=3, model=str(tiny_reward_dir), min_margin=1e6)
    assert reward_model_pairs(PROMPTS, ANSWERS, scorer, wide)[1]["dropped_small_margin"] == 3
    same = reward_model_pairs(PROMPTS[:1], [["Blue.", "Blue. "]], scorer, settings)[1]
    assert same["pairs"] == 0 and same["dropped_tie"] == 1


def test_teachers_answers_are_scored_beside_the_sft_models_and_each_pair_names_its_writers(
        tiny_model_dir, tiny_reward_dir, tmp_path, monkeypatch):
    """The seed scored three models' answers: here the SFT model's and two teachers' (the tiny model,
    seeded apart), sampled in resumable chunks; a second run reads every answer back."""
    from types import SimpleNamespace

    from tunelab.core.models import load_tokenizer, load_variant
    from tunelab.synth.teachers import TeacherSpec
    from tunelab.train import scoredpairs

    write_jsonl(tmp_path / "curated/train.jsonl", [{"messages": [{"role": "user", "content": p}]} for p in PROMPTS])
    teachers = [TeacherSpec(name="tiny-a", model=str(tiny_model_dir)), TeacherSpec(name="tiny-b", model=str(tiny_model_dir))]
    settings = RewardModelPairSettings(count=3, model=str(tiny_reward_dir), min_margin=0.0, samples_per_prompt=1,
                                       teachers=teachers, checkpoint_every=2)
    settings.sampling.max_new_tokens = 8
    sources = SimpleNamespace(reward_model=settings, judge=JudgePairSettings())
    model, tokenizer = load_variant(tiny_model_dir), load_tokenizer(tiny_model_dir)

    def run() -> tuple[list[dict], dict]:
        pairs, report, shards = ScoredSources(sources, tmp_path / "curated").pairs(
            model, tokenizer, 0, tmp_path / "work", [tiny_model_dir])
        assert len(shards) == 3  # the SFT model's answers and each teacher's
        return pairs, report["reward_model"]

    pairs, report = run()
    assert report["writers"] == ["sft", "tiny-a", "tiny-b"] and report["pairs"] == len(pairs) > 0
    for pair in pairs:
        assert sorted(pair["writers"]) == ["sft", "tiny-a", "tiny-b"]
        assert (pair["chosen_writer"], pair["rejected_writer"]) == (pair["writers"][0], pair["writers"][-1])
    assert sum(report["pairs_by_writer"]["chosen"].values()) == len(pairs)
    answers = [row["answers"][0] for name in ("tiny-a", "tiny-b")
               for row in read_jsonl(tmp_path / f"work/reward_model-{name}-answers/rows.jsonl")]
    assert answers[:3] != answers[3:]  # same model, its own seeds: other answers

    def no_teacher(spec):
        raise AssertionError(f"teacher {spec.name} opened although its answers were saved")

    monkeypatch.setattr(scoredpairs, "open_teacher", no_teacher)
    assert run() == (pairs, report)

    down = TeacherSpec(name="server", backend="openai", model="m", base_url=f"http://127.0.0.1:{free_port()}/v1")
    settings.teachers = [down]
    with pytest.raises(RuntimeError, match="teacher 'server': nothing answers at http://127.0.0.1"):
        ScoredSources(sources, tmp_path / "curated")
    with pytest.raises(ConfigError, match="1 answer\\(s\\) per prompt; .* add teachers"):
        RewardModelPairSettings(count=3, model="m", samples_per_prompt=1)


def test_a_model_that_is_not_a_one_output_classifier_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="is not a sequence classifier .*LlamaForCausalLM"):
        RewardModel(str(tiny_model_dir), where="preference.sources.reward_model.model")
    two = classifier_from(tiny_model_dir, tmp_path / "two-labels", 2)
    with pytest.raises(ConfigError, match="has 2 outputs"):
        RewardModel(str(two))
    with pytest.raises(FileNotFoundError, match="cannot open"):
        RewardModel(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="reward_model.model: set a reward model"):
        RewardModelPairSettings(count=4, model=None)


def test_a_reward_model_without_a_chat_template_reads_prompt_and_answer_as_a_text_pair(tmp_path):
    """As the OpenAssistant DeBERTa reward model does: a BERT-style classifier built here (no hub)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "name", "a", "colour", "blue", "red", ".", "?"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32, num_labels=1)
                                  ).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    scorer = RewardModel(str(tmp_path), batch_size=2)
    assert scorer._text([{"role": "user", "content": "Name a colour?"}], [{"role": "assistant", "content": "Blue."}]) \
        == ("Name a colour?", "Blue.")
    rewards = scorer.score([[{"role": "user", "content": "Name a colour?"}]] * 2,
                           [[{"role": "assistant", "content": "Blue."}], [{"role": "assistant", "content": "Red."}]])
    encoded = tokenizer("Name a colour?", "Blue.", return_tensors="pt")  # [CLS] prompt [SEP] answer [SEP]
    with torch.inference_mode():
        alone = scorer.model(**encoded).logits[0, 0].item()
    assert rewards[0] == pytest.approx(alone, abs=1e-5) and rewards[0] != rewards[1]


class ScriptedOpinions(Judge):
    """A judge whose verdicts are given, so every outcome of the both-orders rule is exercised;
    the orders, the prompts and the pairing are the real code's."""

    def __init__(self, opinions: dict[str, tuple[str, str]]):
        super().__init__(JudgeSettings())
        self.opinions = opinions  # prompt -> (verdict with the second answer as A, as B)
        self.asked = []

    def _verdicts(self, conversations, description):
        verdicts = []
        for conversation in conversations:
            self.asked.append(conversation[1]["content"])
            question = conversation[1]["content"].split("\n")[1]
            second_is_a = "Second" in conversation[1]["content"].split("[The Start of Assistant B's Answer]")[0]
            verdicts.append((self.opinions[question][0 if second_is_a else 1], "scripted"))
        return verdicts


def test_judged_pairs_keep_only_verdicts_both_orders_agree_on():
    prompts = ["agree second", "agree first", "position bias", "tie", "identical"]
    answers = [["First answer", "Second answer"]] * 4 + [["Same answer", "Same answer"]]
    judge = ScriptedOpinions({"agree second": ("A", "B"), "agree first": ("B", "A"), "position bias": ("A", "A"),
                              "tie": ("C", "C")})

    pairs, report = judge_pairs(prompts, answers, judge, JudgePairSettings(count=5))

    assert [(p["prompt"][0]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("agree second", "Second answer", "First answer"), ("agree first", "First answer", "Second answer")]
    assert report == {"prompts": 5, "judged": 4, "pairs": 2, "judge": "local: models/base (next-token verdict)",
                      "dropped_identical_answers": 1, "dropped_tie_or_disagreement": 2}
    assert len(judge.asked) == 8  # every judged prompt in both orders
    assert all(p["source"] == "judge/local" for p in pairs)


def test_a_local_judge_pairs_real_answers_by_its_own_verdicts(tiny_model_dir):
    settings = JudgePairSettings(count=3, model=str(tiny_model_dir))
    judge = LocalJudge(settings.judge_settings())
    pairs, report = judge_pairs(PROMPTS, ANSWERS, judge, settings)
    judge.close()
    assert report["judged"] == 3 and report["pairs"] + report["dropped_tie_or_disagreement"] == 3
    for pair in pairs:
        agreed = (pair["verdicts"]["second_as_a"], pair["verdicts"]["second_as_b"])
        assert agreed in {("A", "B"), ("B", "A")}
        first, second = ANSWERS[int(pair["key"].split("-")[1])][:2]
        assert pair["chosen"][0]["content"] == (second if agreed == ("A", "B") else first)
        assert set(pair["evidence"][0]) == {"A", "B", "C"}  # the verdict probabilities, kept


def test_a_judge_server_that_is_down_fails_before_anything_is_sampled():
    settings = JudgePairSettings(count=2, backend="openai", model="judge", base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(RuntimeError, match="nothing answers at http://127.0.0.1"):
        check_ready(settings.judge_settings())
    with pytest.raises(ConfigError, match="preference.sources.judge.base_url: the openai backend needs it"):
        JudgePairSettings(count=2, backend="openai", model="judge")


def test_sft_instructions_are_drawn_from_the_curated_requests(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"request {i}"}, {"role": "assistant", "content": "x"}]}
            for i in range(6)] + [{"messages": [{"role": "user", "content": "request 0"}]}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    drawn = sft_instructions(tmp_path, 4, seed=0, where="preference.sources.judge")
    assert len(set(drawn)) == 4 and set(drawn) <= {f"request {i}" for i in range(6)}
    assert drawn == sft_instructions(tmp_path, 4, seed=0, where="w")
    with pytest.raises(ValueError, match="7 prompts asked for, but .* holds 6 distinct requests"):
        sft_instructions(tmp_path, 7, seed=0, where="preference.sources.judge")
    with pytest.raises(FileNotFoundError, match="--sft-data data/curated"):
        sft_instructions(None, 1, seed=0, where="preference.sources.reward_model")


def pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def test_the_reward_stage_model_learns_the_pairs_and_is_scored_on_prompts_it_never_saw(tiny_model_dir, tmp_path):
    # One learnable signal: the chosen answer is polite, the rejected one is noise.
    pairs = [pair(f"Question number {i}?", "Thank you for asking, here is a clear answer.", "zq xv zq xv zq")
             for i in range(10)]
    settings = RewardModelSettings(enabled=True, heldout_fraction=0.3)
    settings.optim.max_steps, settings.optim.learning_rate, settings.optim.checkpoint_every = 12, 5e-3, 0
    settings.optim.max_length = 64
    train, heldout = split_pairs_by_prompt(pairs, 0.3, 0)
    assert len(heldout) == 3 and not {p["prompt"][0]["content"] for p in train} & {p["prompt"][0]["content"] for p in heldout}

    report = train_reward_model(tiny_model_dir, pairs, settings, tmp_path / "reward", tmp_path / "work",
                                [{"prompt": "Add 1 and 2.", "efficient": "Thank you for asking, here is a clear answer.",
                                  "slow": "zq xv zq xv zq"}])

    assert report["steps"] == 12 and report["train_pairs"] == 7 and report["heldout_pairs"] == 3
    assert report["tokens_seen"] > 0 and report["tokens_per_s"] > 0
    assert report["heldout"]["chosen_above_rejected"] == [1.0] * 3
    assert report["heldout_code_pairs"]["chosen_above_rejected"] == [1.0]
    assert report["heldout"]["margin_mean"] > 0
    reloaded = RewardModel(str(tmp_path / "reward"))  # a plain sequence classifier: the adapter is merged
    assert not (tmp_path / "reward" / "adapter_config.json").exists()
    good, bad = reloaded.score([[{"role": "user", "content": "New question?"}]] * 2,
                               [[{"role": "assistant", "content": "Thank you for asking, here is a clear answer."}],
                                [{"role": "assistant", "content": "zq xv zq xv zq"}]])
    assert good > bad
