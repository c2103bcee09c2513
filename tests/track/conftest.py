"""Fixtures the tracking tests share."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def adapters(tiny_model_dir, tmp_path_factory):
    """models/sft and models/aligned as LoRA adapters on the tiny model, in a project-like folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("project")
    for seed, name in ((1, "sft"), (2, "aligned")):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        model.save_pretrained(root / "models" / name)
    return root
