"""The pairwise judge: verdict parsing and scoring, the local next-token judge on a tiny model, and
the openai judge against the real llama.cpp server of test_openai_teacher (SmolLM2 GGUF on loopback)."""

from __future__ import annotations

from dataclasses import replace
from statistics import mean

import pytest

from tunelab.core.config import ConfigError, build
from tunelab.eval.evaluate import judge_metrics
from tunelab.synth.judge import (
    JUDGE_SYSTEM_PROMPT,
    Judge,
    JudgeSettings,
    OpenAIJudge,
    PairwiseResult,
    open_judge,
    parse_verdict,
    verdict_token_ids,
)

try:  # its module skips itself where llama-cpp-python is missing; the other tests here still run
    import tests.synth.test_openai_teacher as llama_cpp_tests
except pytest.skip.Exception:
    llama_cpp_tests = None
if llama_cpp_tests is not None:
    server = llama_cpp_tests.server  # the module-scoped fixture, started once for this module

POSSIBLE_SCORES = {0.0, 0.25, 0.5, 0.75, 1.0}  # the mean of two verdicts, each 0, 0.5 or 1
QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "Say hello in Spanish.",
             "What is 2 + 3?", "Give one word that rhymes with cat."]
BASE = ["Paris.", "Red.", "Hola.", "5", "Hat."]
VARIANT = ["The capital of France is Paris.", "Blue is a primary colour.", "Hello!", "2 + 3 = 6",
           "Bat, as in the animal."]


def test_parse_verdict_takes_the_last_and_reports_none():
    assert parse_verdict("Assistant A is correct and concise, B adds nothing.\n\n[[A]]") == "A"
    # The explanation quotes the format before the final verdict: the last one is the judge's word.
    assert parse_verdict('The format asks for "[[A]]" or "[[B]]". Assistant B is more accurate. [[B]]') == "B"
    assert parse_verdict("First I thought [[A]], but on reflection both are equally good: [[C]]") == "C"
    assert parse_verdict("Both answers are fine. Final verdict: A") is None
    assert parse_verdict("[[a]] [[ B ]] [A]") is None  # FastChat's format exactly: brackets and capitals


def test_scores_and_counts_from_verdicts():
    result = PairwiseResult(
        verdicts=[("A", "B"), ("A", "A"), ("C", None), ("B", "C"), ("B", "A"), ("C", "C")],
        evidence=[("", "")] * 6,
    )
    assert result.scores == [1.0, 0.5, 0.5, 0.25, 0.0, 0.5]
    assert result.counts() == {"prompts": 6, "judgements": 12, "wins": 3, "ties": 5, "losses": 4,
                               "inconsistent": 2, "unparseable": 1}
    counts = result.counts()
    assert result.win_rate == pytest.approx((counts["wins"] + counts["ties"] / 2) / counts["judgements"])
    summary = judge_metrics(result, seed=0)
    assert summary["win_rate"]["mean"] == pytest.approx(result.win_rate) and summary["win_rate"]["n"] == 6
    assert summary["win_rate"]["ci_low"] <= result.win_rate <= summary["win_rate"]["ci_high"]
    assert result.samples(QUESTIONS[:2])[1]["verdict_variant_a"] == "A"


def test_config_errors_name_the_param():
    with pytest.raises(ConfigError, match=r"evaluate\.judge\.base_url: the openai backend needs it"):
        JudgeSettings(backend="openai", model="qwen")
    with pytest.raises(ConfigError, match=r"evaluate\.judge\.api_key_env: must be the NAME") as error:
        JudgeSettings(backend="openai", model="qwen", base_url="http://x/v1", api_key_env="sk-live-12345")
    assert "sk-live" not in str(error.value)  # a pasted key is never echoed
    with pytest.raises(ConfigError, match=r"evaluate\.judge\.base_url: only the openai backend uses it"):
        JudgeSettings(base_url="http://x/v1")
    with pytest.raises(ConfigError, match=r"evaluate\.judge\.variants: 'base' is not a variant judged"):
        JudgeSettings(variants=["aligned", "base"])
    with pytest.raises(ConfigError, match=r"evaluate\.judge\.batch_size: 0 is outside"):
        JudgeSettings(batch_size=0)
    with pytest.raises(ConfigError, match=r"evaluate\.judge\.backend: 'vllm' is not allowed"):
        build(JudgeSettings, {"backend": "vllm"}, where="evaluate.judge")
    with pytest.raises(ConfigError, match=r"evaluate\.judge: unknown key 'max_answer_char'"):
        build(JudgeSettings, {"max_answer_char": 10}, where="evaluate.judge")
    assert JudgeSettings().describe() == "local: models/base (next-token verdict)"
    served = JudgeSettings(backend="openai", model="qwen", base_url="http://127.0.0.1:8080/v1", api_key_env="KEY")
    assert served.describe() == "openai: qwen at http://127.0.0.1:8080/v1"


def test_smollm2_writes_each_verdict_letter_as_one_token_after_brackets(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": "[User Question]\nhi"}],
        tokenize=False, add_generation_prompt=True,
    )
    prefix, candidates = verdict_token_ids(tokenizer, prompt)
    assert tokenizer.convert_ids_to_tokens(candidates) == ["A", "B", "C"]
    assert tokenizer.convert_ids_to_tokens(prefix[-2:]) == ["Ċ", "[["]  # "assistant\n" then the verdict's "[["
    assert prefix == tokenizer(prompt + "[[", add_special_tokens=False)["input_ids"]


def bpe_tokenizer(corpus: list[str]):
    """A real BPE tokenizer trained in memory: whitespace-split words, merges learnt from `corpus`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["[UNK]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


def test_verdict_tokens_where_the_letter_merges_with_the_brackets():
    tokenizer = bpe_tokenizer(["Verdict: [[A]] [[B]] [[C]]"] * 50)
    assert tokenizer.tokenize("[[A]]") == ["[[A]]"]  # the whole verdict is one token here
    prefix, candidates = verdict_token_ids(tokenizer, "Verdict: ")
    assert tokenizer.convert_ids_to_tokens(candidates) == ["[[A]]", "[[B]]", "[[C]]"]
    assert tokenizer.convert_ids_to_tokens(prefix) == ["Verdict:"]
    # A tokenizer that cannot spell B or C makes them the same unknown token: refused, not guessed.
    with pytest.raises(ValueError, match="cannot tell them apart"):
        verdict_token_ids(bpe_tokenizer(["Verdict: [[A]]"] * 50), "Verdict: ")


class LongerAnswerJudge(Judge):
    """A judge that picks the longer answer, so every verdict follows from the prompt it was shown."""

    def __init__(self):
        super().__init__(JudgeSettings())
        self.asked: list[str] = []

    def _verdicts(self, conversations, description):
        verdicts = []
        for conversation in conversations:
            user = conversation[1]["content"]
            self.asked.append(user)
            a = user.split("[The Start of Assistant A's Answer]\n")[1].split("\n[The End of Assistant A's Answer]")[0]
            b = user.split("[The Start of Assistant B's Answer]\n")[1].split("\n[The End of Assistant B's Answer]")[0]
            verdicts.append(("A" if len(a) > len(b) else "B" if len(b) > len(a) else "C", user))
        return verdicts


def test_both_orders_are_judged_and_scored_for_the_variant():
    judge = LongerAnswerJudge()
    assert all(len(v) > len(b) for b, v in zip(BASE, VARIANT))  # so this judge always prefers the variant
    result = judge.judge_pairs(QUESTIONS, BASE, VARIANT)
    assert result.verdicts == [("A", "B")] * len(QUESTIONS)  # the variant shown as A first, then as B
    assert result.scores == [1.0] * len(QUESTIONS)
    assert [judge.asked.count(first) for first, _ in result.evidence] == [1] * len(QUESTIONS)
    assert all(f"A's Answer]\n{v}\n" in first and f"A's Answer]\n{b}\n" in second
               for (first, second), b, v in zip(result.evidence, BASE, VARIANT))
    swapped = judge.judge_pairs(QUESTIONS, VARIANT, BASE)
    assert swapped.scores == [0.0] * len(QUESTIONS)
    judge.asked.clear()
    identical = judge.judge_pairs(QUESTIONS, BASE, BASE)
    assert len(judge.asked) == len(QUESTIONS)  # both orders are one prompt, asked once
    assert identical.verdicts == [("C", "C")] * len(QUESTIONS) and identical.scores == [0.5] * len(QUESTIONS)


def prompts_asked(judge: Judge, monkeypatch) -> list:
    """Record every judge prompt the backend is asked from now on."""
    asked: list = []
    verdicts = judge._verdicts

    def recording(conversations, description):
        asked.extend(conversations)
        return verdicts(conversations, description)

    monkeypatch.setattr(judge, "_verdicts", recording)
    return asked


@pytest.fixture(scope="module")
def local_judge(tiny_model_dir):
    judge = open_judge(JudgeSettings(model=str(tiny_model_dir), batch_size=3, max_answer_chars=60))
    yield judge
    judge.close()


def test_local_judge_scores_counts_and_symmetries(local_judge):
    result = local_judge.judge_pairs(QUESTIONS, BASE, VARIANT, description="tiny judge")
    assert len(result.scores) == len(QUESTIONS) and set(result.scores) <= POSSIBLE_SCORES
    counts = result.counts()
    assert counts["wins"] + counts["ties"] + counts["losses"] == counts["judgements"] == 2 * len(QUESTIONS)
    assert counts["unparseable"] == 0  # a next-token verdict always exists
    assert result.win_rate == pytest.approx(mean(result.scores))
    assert result.win_rate == pytest.approx((counts["wins"] + counts["ties"] / 2) / counts["judgements"])
    for first, second in result.evidence:
        for probabilities in (first, second):  # rounded to 6 places for the samples file
            assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        # The two orders are different prompts: a judge that ignored the answers, or showed them
        # in one order twice, would give the same probabilities to both.
        assert first != second
    assert len({tuple(first.values()) for first, _ in result.evidence}) == len(QUESTIONS)
    # The same judge prompts with the roles of base and variant swapped: every score mirrors.
    swapped = local_judge.judge_pairs(QUESTIONS, VARIANT, BASE, description="tiny judge, swapped")
    assert swapped.scores == [1 - s for s in result.scores]
    # Padding must not change a verdict: one prompt per forward pass gives the same judgements.
    local_judge.config = replace(local_judge.config, batch_size=1)
    unbatched = local_judge.judge_pairs(QUESTIONS, BASE, VARIANT, description="tiny judge, batch 1")
    local_judge.config = replace(local_judge.config, batch_size=3)
    assert unbatched.verdicts == result.verdicts
    for batched_pair, single_pair in zip(result.evidence, unbatched.evidence):
        for batched, single in zip(batched_pair, single_pair):
            assert batched == pytest.approx(single, abs=1e-4)


def test_identical_answers_score_exactly_one_half(local_judge, monkeypatch):
    # Whatever the judge's position bias, both orders see the same prompt and cancel.
    asked = prompts_asked(local_judge, monkeypatch)
    result = local_judge.judge_pairs(QUESTIONS, BASE, BASE, description="tiny judge, identical")
    assert len(asked) == len(QUESTIONS)  # one prompt per question, asked once
    # The tiny random judge picks a position, not a tie, so the 0.5 below is the two orders
    # scored against each other (a score that ignored which order it was would give 0 or 1).
    assert all(first == second and first in ("A", "B") for first, second in result.verdicts)
    assert result.scores == [0.5] * len(QUESTIONS)


def test_answers_are_cut_at_max_answer_chars(local_judge):
    from tunelab.synth.judge import TRUNCATION_MARK, judge_messages

    user = judge_messages("q", "x" * 100, "short", max_answer_chars=60)[1]["content"]
    assert "x" * 60 + TRUNCATION_MARK + "\n[The End of Assistant A's Answer]" in user and "x" * 61 not in user
    assert "\nshort\n" in user
    long = local_judge.judge_pairs(QUESTIONS[:1], ["x" * 5000], ["y" * 5000], description="tiny judge, long")
    # Cut to the same 60 characters, a 5000-character answer is the same judge prompt as a 61-character one.
    cut = local_judge.judge_pairs(QUESTIONS[:1], ["x" * 61], ["y" * 61], description="tiny judge, cut")
    assert long.evidence == cut.evidence


@pytest.mark.skipif(llama_cpp_tests is None, reason="llama-cpp-python[server] is not installed")
def test_openai_judge_against_a_real_server(server, monkeypatch):
    monkeypatch.setenv("TUNELAB_TEST_KEY", llama_cpp_tests.API_KEY)
    config = JudgeSettings(backend="openai", model="smollm2", base_url=server, api_key_env="TUNELAB_TEST_KEY",
                         max_new_tokens=48, concurrency=2)
    judge = open_judge(config)
    assert isinstance(judge, OpenAIJudge)
    result = judge.judge_pairs(QUESTIONS[:2], BASE[:2], VARIANT[:2], description="llama.cpp judge")
    counts = result.counts()
    assert counts["prompts"] == 2 and counts["wins"] + counts["ties"] + counts["losses"] == 4
    assert set(result.scores) <= POSSIBLE_SCORES
    texts = [text for pair in result.evidence for text in pair]
    assert all(text.strip() for text in texts)  # the judge wrote something for each order
    assert [parse_verdict(t) for t in texts] == [v for pair in result.verdicts for v in pair]
    assert counts["unparseable"] == sum(parse_verdict(t) is None for t in texts)
    assert judge.teacher.stats.new_tokens > 0
    assert config.describe() == f"openai: smollm2 at {server}" and llama_cpp_tests.API_KEY not in config.describe()
    asked = prompts_asked(judge, monkeypatch)
    identical = judge.judge_pairs(QUESTIONS[:1], BASE[:1], BASE[:1], description="llama.cpp judge, identical")
    assert len(asked) == 1 and identical.verdicts[0][0] == identical.verdicts[0][1] and identical.scores == [0.5]


def test_openai_judge_without_its_key_names_the_param(monkeypatch):
    monkeypatch.delenv("TUNELAB_JUDGE_KEY", raising=False)
    config = JudgeSettings(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env="TUNELAB_JUDGE_KEY")
    with pytest.raises(ConfigError, match=r"evaluate\.judge\.api_key_env: environment variable TUNELAB_JUDGE_KEY"):
        open_judge(config)
