"""Saved models hold only what describes the model, not the machine that saved it."""

from __future__ import annotations

from tunelab.core.models import save_tokenizer


def test_a_saved_tokenizer_is_the_same_bytes_online_and_offline(smollm2_tokenizer_dir, tmp_path):
    # HF_HUB_OFFLINE=1 (which `make` sets) loads as if local_files_only=True; transformers would
    # copy that option into tokenizer_config.json, and the model's DVC hash would depend on it.
    from transformers import AutoTokenizer

    for offline in (True, False):
        save_tokenizer(AutoTokenizer.from_pretrained(smollm2_tokenizer_dir, local_files_only=offline),
                       tmp_path / str(offline))
    offline, online = ((tmp_path / name / "tokenizer_config.json").read_bytes() for name in ("True", "False"))
    assert offline == online and b"local_files_only" not in offline
