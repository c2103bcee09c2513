"""Saved models hold only what describes the model, not the machine that saved it."""

from __future__ import annotations

import json

import pytest

from tunelab.core.models import save_tokenizer


@pytest.mark.parametrize("offline", [True, False])
def test_a_saved_tokenizer_is_the_same_bytes_online_and_offline(smollm2_tokenizer_dir, tmp_path, offline):
    # HF_HUB_OFFLINE=1 (which `make` sets) loads as if local_files_only=True; transformers would
    # copy that option into tokenizer_config.json, and the model's DVC hash would depend on it.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir, local_files_only=offline)
    save_tokenizer(tokenizer, tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "local_files_only" not in saved
    reference = tmp_path / "reference"
    save_tokenizer(AutoTokenizer.from_pretrained(smollm2_tokenizer_dir, local_files_only=not offline), reference)
    assert (reference / "tokenizer_config.json").read_bytes() == (tmp_path / "tokenizer_config.json").read_bytes()
