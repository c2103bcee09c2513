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
