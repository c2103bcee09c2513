"""Code preference pairs: every rule on real solutions run in the sandbox (tunelab.train.codepairs)."""

import pytest

from tunelab.core.config import ConfigError
from tunelab.tasks.codeproblems import ProblemSource, load_sources, user_message
from tunelab.train.codepairs import (
    CodePairSettings,
    code_answer,
    heldout_rows,
    make_code_pairs,
    pair_from_samples,
    reference_pair,
    split_problems,
)

SETTINGS = CodePairSettings(timing_repeats=3)
RETURNS_NOTHING = "def merge_manifests(lists):\n    return []\n"  # runs, and fails the tests


@pytest.fixture(scope="module")
def problems():
    return load_sources([ProblemSource()])


@pytest.fixture(scope="module")
def merge(problems):
    """K-way merge: a heap against a scan of every list per element, many times slower on the tests."""
    return next(p for p in problems if p["task_id"] == "tunelab/048")


def test_split_holds_out_unseen_problems_and_raising_count_only_adds_some(problems):
    seen = {p["task_id"] for p in problems[:10]}
    train, held = split_problems(problems, seen, 16, 10, seed=0)
    held_ids = {p["task_id"] for p in held}
    assert len(held) == 16 and not held_ids & seen and all(p["slow_reference"] for p in held)
    assert len(train) == 10 and not held_ids & {p["task_id"] for p in train}
    more, held_again = split_problems(problems, seen, 16, 20, seed=0)
    assert held_again == held and more[:10] == train
    assert split_problems(problems, seen, 16, 10, seed=1)[1] != held


def test_split_stops_on_a_problem_without_tests_and_on_too_many_problems(problems):
    with pytest.raises(ValueError, match="tunelab/001 has no tests"):
        split_problems([dict(problems[0], test="")] + problems[1:], set(), 2, 2, seed=0)
    with pytest.raises(ConfigError, match="heldout: 70 asked"):
        split_problems(problems, set(), 70, 0, seed=0)
    with pytest.raises(ConfigError, match="count: 60 asked"):
        split_problems(problems, set(), 16, 60, seed=0)


def test_reference_pair_prefers_the_solution_measured_faster(merge):
    record = {"timings": []}
    pair, why = reference_pair(merge, SETTINGS, record)
    assert why == "" and pair["source"] == "code/efficiency-reference" and pair["key"] == "tunelab/048"
    assert pair["prompt"] == [{"role": "user", "content": user_message(merge)}]
    assert pair["chosen"][0]["content"] == code_answer(merge["reference"])
    assert pair["rejected"][0]["content"] == code_answer(merge["slow_reference"])
    timing = record["timings"][0]
    assert 1 <= timing["noise_ratio"] < 1.5 and timing["ratio"] >= 1.5 * timing["noise_ratio"]
    assert "ratio" not in pair["evidence"]  # timings stay out of pairs.jsonl: a re-run writes the same rows


def test_references_of_the_same_speed_or_a_failing_slow_one_form_no_pair(merge):
    same = dict(merge, slow_reference=merge["reference"])
    assert reference_pair(same, SETTINGS, {"timings": []}) == (None, "slow reference not measurably slower")
    wrong = dict(merge, slow_reference=RETURNS_NOTHING)
    assert reference_pair(wrong, SETTINGS, {"timings": []}) == (None, "slow_reference failed")


def test_sampled_answers_pair_correct_over_failing_and_a_forged_exit_fails(merge):
    forged = "```python\nimport os\nos._exit(0)\n```"  # ends the process before any test can fail
    record = {"timings": []}
    pair = pair_from_samples(merge, [forged, code_answer(merge["reference"])], SETTINGS, record)
    assert pair["source"] == "code/correctness-sampled" and pair["rejected"][0]["content"] == forged
    assert pair["evidence"]["rejected_status"] != "passed" and record["sampled_passed"] == 1


def test_sampled_answers_pair_fast_over_slow_in_either_order(merge):
    slow, fast = code_answer(merge["slow_reference"]), code_answer(merge["reference"])
    for answers in ([slow, fast], [fast, slow]):
        pair = pair_from_samples(merge, answers, SETTINGS, {"timings": []})
        assert pair["source"] == "code/efficiency-sampled"
        assert pair["chosen"][0]["content"] == fast and pair["rejected"][0]["content"] == slow


def test_sampled_answers_of_the_same_speed_pair_the_tidier_one(merge):
    untidy = code_answer(merge["reference"].replace("merged = []", "merged=[]").replace("pos += 1", "pos+=1"))
    tidy = code_answer(merge["reference"])
    pair = pair_from_samples(merge, [untidy, tidy], SETTINGS, {"timings": []})
    assert pair["source"] == "code/readability-sampled"
    assert pair["chosen"][0]["content"] == tidy and pair["rejected"][0]["content"] == untidy
    assert pair["evidence"]["pep8_findings_chosen"] == 0 < pair["evidence"]["pep8_findings_rejected"]


def test_unpaired_samples_fall_back_to_the_references_and_are_counted(merge):
    failing = code_answer(RETURNS_NOTHING)
    pairs, report = make_code_pairs([merge], [[failing, failing]], SETTINGS)
    assert [p["source"] for p in pairs] == ["code/efficiency-reference"]
    assert report["pairs_by_source"] == {"code/efficiency-reference": 1} and report["unpaired"] == {}
    assert report["sampled_answers"] == 2 and report["sampled_answers_passed"] == 0


def test_heldout_rows_hold_both_verified_solutions(merge):
    assert heldout_rows([merge], SETTINGS) == [{
        "task_id": "tunelab/048", "prompt": user_message(merge),
        "efficient": code_answer(merge["reference"]), "slow": code_answer(merge["slow_reference"])}]
    with pytest.raises(ValueError, match="tunelab/048's slow_reference does not pass its own tests"):
        heldout_rows([dict(merge, slow_reference=RETURNS_NOTHING)], SETTINGS)


def test_slower_means_beyond_the_threshold_times_the_measured_noise():
    from tunelab.train.codepairs import clearly_slower, same_speed

    assert clearly_slower({"ratio": 2.0, "noise_ratio": 1.2, "status": "measured"}, 1.5)
    assert not clearly_slower({"ratio": 1.6, "noise_ratio": 1.2, "status": "measured"}, 1.5)  # 1.6 < 1.5 x 1.2
    assert clearly_slower({"ratio": None, "noise_ratio": 1.0, "status": "timeout"}, 1.5)  # slower beyond measure
    assert not clearly_slower({"ratio": None, "noise_ratio": 1.0, "status": "failed"}, 1.5)
    assert same_speed({"ratio": 1.2, "noise_ratio": 1.0, "status": "measured"}, 1.5)
    assert not same_speed({"ratio": 0.6, "noise_ratio": 1.0, "status": "measured"}, 1.5)


def test_leetcode_and_apps_problems_pair_their_sampled_solutions_and_have_no_reference_pair(tmp_path):
    """The code source through the existing loaders: a LeetCodeDataset-format file (a problem written
    here, not one of the evaluation set's) and APPS rows (call-based and stdin). They carry no slow
    reference, so only sampled solutions pair, and an all-failing problem is counted unpaired."""
    import json

    from tests.conftest import REPO

    leetcode = {
        "task_id": "count-even-digits", "entry_point": "Solution().countEven", "prompt": "from typing import *\n",
        "test": "def check(candidate):\n    assert candidate(nums=[12, 345, 2, 6, 7896]) == 2\n"
                "    assert candidate(nums=[555, 901, 482, 1771]) == 1\n",
        "completion": "class Solution:\n    def countEven(self, nums: List[int]) -> int:\n"
                      "        return sum(len(str(n)) % 2 == 0 for n in nums)\n",
        "meta": {"question_title": "Count the numbers with an even number of digits.", "difficulty": "Easy",
                 "lang_code": "class Solution:\n    def countEven(self, nums: List[int]) -> int:"},
    }
    (tmp_path / "leetcode.jsonl").write_text(json.dumps(leetcode) + "\n")
    problems = load_sources([ProblemSource(format="leetcode", path=str(tmp_path / "leetcode.jsonl")),
                             ProblemSource(format="apps", path=str(REPO / "tests/data/apps_sample.jsonl"), limit=2)])
    assert [p["task_id"] for p in problems] == ["leetcode/count-even-digits", "apps/9001", "apps/9002"]
    assert {p["io_mode"] for p in problems} == {"function", "stdin"} and not any(p["slow_reference"] for p in problems)

    wrong = {"leetcode/count-even-digits": "class Solution:\n    def countEven(self, nums):\n        return 0\n",
             "apps/9001": "print(0)\n", "apps/9002": "def max_gain(values):\n    return -1\n"}
    samples = [[code_answer(wrong[p["task_id"]]), code_answer(p["reference"])] for p in problems]
    samples[-1] = [code_answer(wrong["apps/9002"])] * 2  # nothing passes: no pair, and no reference to fall back on
    pairs, report = make_code_pairs(problems, samples, SETTINGS)
    assert [(p["key"], p["source"]) for p in pairs] == [("leetcode/count-even-digits", "code/correctness-sampled"),
                                                         ("apps/9001", "code/correctness-sampled")]
    assert all(p["chosen"][0]["content"] == code_answer(problem["reference"]) for p, problem in zip(pairs, problems))
    assert report["unpaired"] == {"apps/9002": "no slow reference"} and report["sampled_answers_passed"] == 2
