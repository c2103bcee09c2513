"""The verifiable rewards GRPO and RLOO train on: each function on known answers, the guard, and a
hostile completion that earns no code reward."""

from __future__ import annotations

import json

import pytest

from tunelab.core.config import ConfigError
from tunelab.tasks.codeproblems import load_tunelab
from tunelab.train.rewards import RewardLog, RewardSettings, build_rewards, guard_failures, rl_rows

END = 2  # the end-of-turn id the tests' completions end with
ROW = {"key": 1, "prompt": "Describe a storm. Do not use any commas. Answer in all lowercase letters.",
       "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"], "kwargs": [{}, {}]}


@pytest.fixture(scope="module")
def problem() -> dict:
    return load_tunelab("data/seed/code_problems.jsonl")[0]


def rewards_of(settings: RewardSettings, rows: list[dict], texts: list[str], ended: list[bool] | None = None,
               problems: dict | None = None, log: RewardLog | None = None) -> dict[str, list]:
    functions, _ = build_rewards(settings, problems or {}, {END}, log)
    ids = [[5, END] if end else [5, 6] for end in (ended or [True] * len(texts))]
    columns = {key: [row[key] for row in rows] for key in ("checks", "task_id")}
    return {f.__name__: f(prompts=[row["prompt"] for row in rows], completions=[[{"role": "assistant", "content": t}]
                                                                              for t in texts],
                          completion_ids=ids, **columns) for f in functions}


def test_instruction_reward_is_the_fraction_of_instructions_followed():
    rows = rl_rows([ROW] * 3, [])
    texts = ["the storm came in fast and loud", "The storm came in fast and loud", "The storm, fast, loud and wild"]
    got = rewards_of(RewardSettings(code_correct=0.0), rows, texts)
    assert got == {"instructions": [1.0, 0.5, 0.0]}


def test_strict_and_loose_levels_differ_where_ifeval_does():
    rows = rl_rows([{**ROW, "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}], [])
    text = ["Sure, here it is:\nthe storm came in fast and loud and wild"]  # loose drops the first line
    assert rewards_of(RewardSettings(code_correct=0.0, instruction_level="strict"), rows, text) == {"instructions": [0.0]}
    assert rewards_of(RewardSettings(code_correct=0.0, instruction_level="loose"), rows, text) == {"instructions": [1.0]}


def test_the_guard_zeroes_empty_short_and_cut_answers_that_satisfy_the_checkers():
    rows = rl_rows([ROW] * 4, [])
    texts = ["", "ok", "the storm came in fast and loud", "the storm came in fast and loud"]
    got = rewards_of(RewardSettings(code_correct=0.0), rows, texts, ended=[True, True, False, True])
    assert got == {"instructions": [0.0, 0.0, 0.0, 1.0]}
    # Without the guard "ok" has no comma and the cut answer follows both (IFEval itself fails an empty one).
    unguarded = RewardSettings(code_correct=0.0, min_words=0, reward_truncated=True)
    assert rewards_of(unguarded, rows, texts, ended=[True, True, False, True]) == {"instructions": [0.0, 0.5, 1.0, 1.0]}
    assert guard_failures(["a b c"], None, {END}, RewardSettings()) == [False]  # no ids: only the length rule


def test_code_reward_runs_the_tests_in_the_sandbox(problem):
    rows = rl_rows([ROW], [problem])
    fence = "```python\n{}\n```\nThis scans once."
    hostile = ("import sys\nprint('passed')\nsys.exit(0)\n")  # claims a pass without answering
    crashing = "def longest_calm_stretch(readings, tolerance):\n    raise RuntimeError('no')\n"
    texts = [fence.format(problem["reference"]), fence.format(problem["reference"]), fence.format(hostile),
             fence.format(crashing)]
    got = rewards_of(RewardSettings(), [rows[1], rows[1], rows[1], rows[1]], texts,
                     problems={problem["task_id"]: problem})
    assert got["code_correct"] == [1.0, 1.0, 0.0, 0.0]
    assert got["instructions"] == [None] * 4  # a code prompt has no instructions: TRL leaves the function out
    mixed = rewards_of(RewardSettings(), rows, ["the storm came in fast and loud", texts[0]],
                       problems={problem["task_id"]: problem})
    assert mixed == {"instructions": [1.0, None], "code_correct": [None, 1.0]}


def test_efficiency_and_style_rewards_grade_passing_code_only(problem):
    rows = rl_rows([], [problem] * 3)
    fence = "```python\n{}\n```\nDone here."
    settings = RewardSettings(instructions=0.0, code_correct=0.0, code_efficiency=1.0, code_style=1.0)
    texts = [fence.format(problem["reference"]), fence.format(problem["slow_reference"]),
             fence.format("def longest_calm_stretch(readings,tolerance):  return 0")]
    got = rewards_of(settings, rows, texts, problems={problem["task_id"]: problem})
    fast, slow, wrong = got["code_efficiency"]
    assert fast > 0.5 and slow < 0.5 * fast and wrong == 0.0  # the quadratic reference is slower on the big test
    assert got["code_style"][0] == 1.0 and got["code_style"][2] == 0.0


def test_each_completion_runs_in_the_sandbox_once_whatever_the_number_of_code_rewards(problem, monkeypatch):
    import tunelab.tasks.codeproblems as codeproblems

    real_verify, runs = codeproblems.verify, []

    def counted(problem, text, *args, **kwargs):  # the real sandbox run, counted
        runs.append(text)
        return real_verify(problem, text, *args, **kwargs)

    monkeypatch.setattr(codeproblems, "verify", counted)
    rows = rl_rows([], [problem] * 2)
    texts = ["```python\n{}\n```\nDone here.".format(problem["reference"]), "```python\nx = (\n```\nDone."]
    settings = RewardSettings(instructions=0.0, code_correct=1.0, code_style=1.0)
    got = rewards_of(settings, rows, texts, problems={problem["task_id"]: problem})
    assert got == {"code_correct": [1.0, 0.0], "code_style": [1.0, 0.0]}
    assert sorted(runs) == sorted(texts)  # two rewards, one run per completion


def test_the_log_keeps_the_first_and_the_latest_step():
    class State:
        global_step = 0

    state, log = State(), RewardLog()
    functions, weights = build_rewards(RewardSettings(code_correct=0.0), {}, {END}, log)
    rows = rl_rows([ROW], [])
    for step, text in enumerate(["", "the storm came in fast and loud"]):
        state.global_step = step
        functions[0](prompts=[rows[0]["prompt"]], completions=[[{"role": "assistant", "content": text}]],
                     completion_ids=[[5, END]], checks=[rows[0]["checks"]], task_id=[None], trainer_state=state)
    samples = log.samples()
    assert weights == [1.0]
    assert samples["first"]["step"] == 0 and samples["first"]["rows"][0]["rewards"] == {"instructions": 0.0}
    assert samples["last"]["rows"][0] == {"prompt": ROW["prompt"], "completion": "the storm came in fast and loud",
                                          "rewards": {"instructions": 1.0}}
    assert samples["guarded_completions"] == 1


def test_rows_carry_their_checks_as_text():
    rows = rl_rows([ROW], [])
    assert json.loads(rows[0]["checks"])["instruction_id_list"] == ROW["instruction_id_list"]
    assert rows[0]["prompt"] == [{"role": "user", "content": ROW["prompt"]}]


def test_bad_reward_settings_fail_clearly():
    with pytest.raises(ConfigError, match="so is every other reward weight"):
        RewardSettings(instructions=0.0, code_correct=0.0)
    with pytest.raises(ConfigError, match="instruction_level: 'lax' is not allowed"):
        RewardSettings(instruction_level="lax")


def test_fewer_prompts_than_one_step_needs_fail_clearly(monkeypatch):
    """TRL drops an incomplete step of prompts, so too few would train 0 steps without a word."""
    from tunelab.core.config import build
    from tunelab.train.align import AlignSettings, check_prompts_per_step

    settings = build(AlignSettings, {"grpo": {"prompts_per_step": 4}}, "align")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"align\.grpo\.prompts_per_step: a step needs 8 distinct prompts "
                                          r"\(prompts_per_step x 2 processes\), but align\.rl gives 4; lower"):
        check_prompts_per_step("grpo", 4, settings)
    check_prompts_per_step("grpo", 8, settings)
