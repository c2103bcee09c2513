"""The report's view of an online RL run: reward curves and the first and last step's samples."""

from __future__ import annotations

from tunelab.track.figures import online_rl_curves
from tunelab.track.report import online_rl_samples

HISTORY = [{"step": step, "loss": 0.0, "reward": 0.1 * step, "rewards/instructions/mean": 0.1 * step,
            "rewards/instructions/std": 0.05, "kl": 0.01 * step, "completions/mean_length": 100 - step,
            "completions/clipped_ratio": 0.5 - 0.1 * step} for step in (1, 2, 3)]
SAMPLES = {"guarded_completions": 3,
           "first": {"step": 0, "rows": [{"prompt": "Write | a poem", "completion": "A poem, with commas",
                                          "rewards": {"instructions": 0.0, "code_correct": None}}]},
           "last": {"step": 2, "rows": [{"prompt": "Write | a poem", "completion": "a poem without them",
                                         "rewards": {"instructions": 1.0, "code_correct": None}}]}}


def test_samples_show_each_reward_at_the_first_and_last_step():
    text = online_rl_samples({"method": "grpo", "samples": SAMPLES})
    assert "3 completions were zeroed by the guard" in text
    assert "**Step 0**" in text and "**Step 2**" in text
    assert "| Write &#124; a poem | A poem, with commas | 0.00 | - |" in text  # None: the reward did not apply
    assert "| a poem without them | 1.00 | - |" in text
    assert online_rl_samples({"method": "dpo"}) == ""  # offline methods have no samples section


def test_curves_figure_is_written(tmp_path):
    path = online_rl_curves(HISTORY, "grpo", tmp_path / "online_rl.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
