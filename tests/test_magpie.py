"""Magpie's pre-query template is derived from whatever chat template the tokenizer has."""

import pytest
from transformers import AutoTokenizer

from tunelab.magpie import clean_instruction, pre_query_template

LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
    " + m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def test_chatml_prefix_ends_where_user_text_starts(smollm2_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    prefix = pre_query_template(tokenizer)
    assert prefix.endswith("<|im_start|>user\n")
    assert prefix.startswith("<|im_start|>system\n")
    assert pre_query_template(tokenizer, "Be brief.") == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"


def test_llama3_style_template(smollm2_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tokenizer.chat_template = LLAMA3
    prefix = pre_query_template(tokenizer)
    assert prefix.endswith("<|start_header_id|>user<|end_header_id|>\n\n")


def test_template_without_user_content_is_rejected(smollm2_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
    with pytest.raises(ValueError, match="Magpie cannot use it"):
        pre_query_template(tokenizer)


def test_clean_instruction_cuts_run_on_turns():
    assert clean_instruction("What is rain?<|im_end|>\n<|im_start|>assistant\nRain is") == "What is rain?"
    assert clean_instruction("  Plan a trip.\nassistant\nSure") == "Plan a trip."
