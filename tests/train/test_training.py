"""Training that stops being a number stops there, with one line that says what to change."""

import dataclasses

import pytest
import torch
from transformers import TrainerCallback

from tunelab.train.sft import SFTSettings, train_sft
from tunelab.train.training import OptimSettings


class PoisonAfterFirstStep(TrainerCallback):
    """The fault a diverging run ends in (on a GPU, bf16 GRPO at a LoRA learning rate): after step
    1's update, a trainable weight holds NaN, so every later loss and gradient is NaN."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))


def test_diverging_training_stops_with_one_line_and_saves_nothing(tiny_model_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer number {i}."}]} for i in range(8)]
    settings = SFTSettings(optim=dataclasses.replace(OptimSettings(), max_steps=4, batch_size=2, checkpoint_every=0))
    with pytest.raises(RuntimeError, match=r"^training diverged at step 2: grad_norm is nan \(fp32, learning rate "
                                           r"0.0002\); lower the learning rate$"):
        train_sft(tiny_model_dir, rows, [], settings, tmp_path / "out", tmp_path / "work", [PoisonAfterFirstStep()])
    assert not (tmp_path / "out").exists()
