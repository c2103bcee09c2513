"""NucleusSampler keeps exactly the tokens transformers' top-p keeps, and samples them in proportion."""

import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from tunelab.core.generation import NucleusSampler


def transformers_nucleus(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Which tokens transformers' own warpers (temperature, then top-p) leave samplable."""
    warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, scores.clone()))
    return torch.isfinite(warped)


def drawn_tokens(sampler: NucleusSampler, scores: torch.Tensor, draws: int) -> torch.Tensor:
    """Token ids the sampler picks for each row, `draws` times: shape (draws, rows)."""
    picks = []
    for _ in range(draws):
        out = sampler(None, scores)
        assert (torch.isfinite(out).sum(dim=-1) == 1).all()  # exactly one token left for greedy's argmax
        picks.append(out.argmax(dim=-1))
    return torch.stack(picks)


def test_sampler_draws_only_from_transformers_nucleus_in_both_paths():
    torch.manual_seed(0)
    peaked = torch.randn(4, 1000) * 4  # the nucleus fits in the top-k window
    flat = torch.randn(4, 1000) * 0.1  # it does not: the full-sort fallback
    for scores in (peaked, flat):
        for temperature, top_p in ((0.7, 0.9), (1.0, 0.5)):
            allowed = transformers_nucleus(scores, temperature, top_p)
            picks = drawn_tokens(NucleusSampler(temperature, top_p, window=64), scores, draws=200)
            assert allowed.gather(1, picks.T).all()
    assert transformers_nucleus(flat, 0.7, 0.9).sum(dim=-1).min() > 64  # the fallback really ran


def test_sampler_frequencies_follow_the_renormalised_nucleus():
    torch.manual_seed(1)
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    picks = drawn_tokens(NucleusSampler(temperature=1.0, top_p=0.9, window=2), scores, draws=4000)
    counts = torch.bincount(picks.flatten(), minlength=4).float() / 4000
    # nucleus {0, 1, 2}: 0.5 + 0.3 < 0.9, so token 2 is kept and token 3 (0.95 before it) is not
    expected = torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95
    assert torch.allclose(counts, expected, atol=0.03)


def test_top_p_one_samples_the_whole_distribution():
    torch.manual_seed(2)
    scores = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    picks = drawn_tokens(NucleusSampler(temperature=1.0, top_p=1.0), scores, draws=3000)
    counts = torch.bincount(picks.flatten(), minlength=3).float() / 3000
    assert torch.allclose(counts, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)


def test_same_seed_same_draws():
    scores = torch.randn(8, 500)
    torch.manual_seed(3)
    first = drawn_tokens(NucleusSampler(0.8, 0.95, window=32), scores, draws=20)
    torch.manual_seed(3)
    assert torch.equal(first, drawn_tokens(NucleusSampler(0.8, 0.95, window=32), scores, draws=20))


# ---------------------------------------------------------------- the decoding loop

PROMPTS = ["Write a haiku about rain.", "List three colours.", "Hi", ("Explain what a compiler does, in detail, "
           "for a reader who has never programmed and wants to know why programs need one at all.")]


def tiny_model_and_tokenizer(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():  # sharpen attention: at init it is near uniform, blind to positions and padding
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight *= 20
            layer.self_attn.k_proj.weight *= 20
    return model, tokenizer


def library_rows(model, tokenizer, prompts, sampling):
    """The new token ids transformers' own generate returns for the same left-padded batch."""
    from tunelab.core.generation import _library_generate_batch

    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        return _library_generate_batch(model, tokenizer, encoded, sampling, None, None)


def end_some_rows_early(model, tokenizer, prompts, sampling) -> None:
    """Make the end of sequence a token the first row writes third and some other row never writes."""
    rows = library_rows(model, tokenizer, prompts, sampling)
    end = next(t for t in rows[0][2:] if any(t not in row for row in rows[1:]))
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(end)


def test_greedy_texts_are_generates_while_rows_leave_the_batch(tiny_model_dir):
    """Rows finish at different steps; every row's text is still exactly transformers' greedy one."""
    from tunelab.core.generation import GenerationStats, SamplingSettings, generate_texts

    model, tokenizer = tiny_model_and_tokenizer(tiny_model_dir)
    prompts = sorted(PROMPTS, key=len)
    sampling = SamplingSettings(max_new_tokens=24, temperature=0.0, repetition_penalty=1.1, batch_size=len(prompts))
    end_some_rows_early(model, tokenizer, prompts, sampling)
    stats = GenerationStats()
    ours = generate_texts(model, tokenizer, prompts, sampling, seed=0, stats=stats)
    assert ours == [tokenizer.decode(row, skip_special_tokens=True)
                    for row in library_rows(model, tokenizer, prompts, sampling)]
    assert stats.new_tokens < len(prompts) * sampling.max_new_tokens  # some row did end early


def test_each_answer_says_whether_it_ended_or_was_cut_at_the_limit(tiny_model_dir):
    from tunelab.core.answers import CUT_AT_LENGTH, ENDED
    from tunelab.core.generation import SamplingSettings, generate_answers

    model, tokenizer = tiny_model_and_tokenizer(tiny_model_dir)
    prompts = sorted(PROMPTS, key=len)
    sampling = SamplingSettings(max_new_tokens=24, temperature=0.0, repetition_penalty=1.1, batch_size=len(prompts))
    end_some_rows_early(model, tokenizer, prompts, sampling)
    expected = [ENDED if tokenizer.eos_token_id in row else CUT_AT_LENGTH
                for row in library_rows(model, tokenizer, prompts, sampling)]
    assert set(expected) == {ENDED, CUT_AT_LENGTH}
    assert [a.stopped for a in generate_answers(model, tokenizer, prompts, sampling, seed=0)] == expected
    # a stop condition the caller set is an end, not a cut
    stopped = generate_answers(model, tokenizer, prompts, sampling, seed=0, stop_when=lambda text: len(text) >= 5)
    assert [a.stopped for a in stopped] == [ENDED] * len(prompts)


def test_stop_when_ends_a_row_once_its_text_says_so(tiny_model_dir):
    from tunelab.core.generation import SamplingSettings, generate_texts

    model, tokenizer = tiny_model_and_tokenizer(tiny_model_dir)
    sampling = SamplingSettings(max_new_tokens=20, temperature=0.0, repetition_penalty=1.0, batch_size=4)
    full = generate_texts(model, tokenizer, PROMPTS, sampling, seed=0)
    cut = generate_texts(model, tokenizer, PROMPTS, sampling, seed=0, stop_when=lambda text: len(text) >= 5)
    for long, short in zip(full, cut):
        assert long.startswith(short) and (len(short) < len(long) or len(long) < 5)
    assert any(len(short) < len(long) for long, short in zip(full, cut))


def test_first_code_block_closed_matches_what_extraction_keeps():
    from tunelab.tasks.humaneval import extract_completion, first_code_block_closed

    answer = "Here it is:\n```python\ndef f():\n    return 1\n```\n\nIt returns one.\n```python\nf()\n```"
    stop = next(i for i in range(len(answer) + 1) if first_code_block_closed(answer[:i]))
    assert answer[:stop].endswith("```") and "It returns" not in answer[:stop]
    assert extract_completion(answer[:stop], "chat") == extract_completion(answer, "chat")
    assert not first_code_block_closed("```python\ndef f():\n    return 1\n")
