"""Magpie's pre-query template is derived from whatever chat template the tokenizer has.

The four templates below are written here in the style of each family (ChatML, Llama-3, Qwen2,
Gemma) and put on SmolLM2's tokenizer, so no hub download is needed.
"""

import pytest
from transformers import AutoTokenizer

from tunelab.synth.magpie import (
    clean_instruction,
    end_of_turn_markers,
    pre_query_template,
)

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
    " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN2 = (
    "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + m['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# (template, pre-query without a system prompt, end-of-turn marker the model might run into)
FAMILIES = {
    "chatml": (CHATML, "<|im_start|>user\n", "<|im_end|>"),
    "llama3": (LLAMA3, "<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
    "qwen2": (QWEN2, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n", "<|im_end|>"),
    "gemma": (GEMMA, "<start_of_turn>user\n", "<end_of_turn>"),
}


@pytest.fixture
def tokenizer(smollm2_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pre_query_and_end_marker_for_each_family(tokenizer, family):
    template, expected_prefix, end_marker = FAMILIES[family]
    tokenizer.chat_template = template
    prefix = pre_query_template(tokenizer)
    assert prefix.endswith(expected_prefix)
    assert "TUNELAB" not in prefix
    markers = end_of_turn_markers(tokenizer)
    assert end_marker in markers
    run_on = f"How do volcanoes form?{end_marker}\nassistant stuff that must go"
    assert clean_instruction(run_on, markers) == "How do volcanoes form?"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_follow_up_pre_query_contains_the_first_exchange(tokenizer, family):
    template, expected_prefix, _ = FAMILIES[family]
    tokenizer.chat_template = template
    history = [{"role": "user", "content": "Name a planet."}, {"role": "assistant", "content": "Mars."}]
    prefix = pre_query_template(tokenizer, None, history)
    assert prefix.index("Name a planet.") < prefix.index("Mars.")
    assert prefix.endswith(expected_prefix.split("\n")[-2] + "\n" if family == "qwen2" else expected_prefix)


def test_system_prompt_goes_into_the_prefix(tokenizer):
    tokenizer.chat_template = CHATML
    assert pre_query_template(tokenizer, "Be brief.") == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"


def test_smollm2_own_template(tokenizer):
    prefix = pre_query_template(tokenizer)
    assert prefix.startswith("<|im_start|>system\n") and prefix.endswith("<|im_start|>user\n")


def test_gemma_rejects_a_system_prompt_with_a_clear_error(tokenizer):
    tokenizer.chat_template = GEMMA
    with pytest.raises(ValueError, match="System role not supported"):
        pre_query_template(tokenizer, "Be brief.")


def test_template_without_user_content_is_rejected(tokenizer):
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
    with pytest.raises(ValueError, match="Magpie cannot use it"):
        pre_query_template(tokenizer)
