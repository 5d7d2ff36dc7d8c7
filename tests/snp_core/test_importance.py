"""The SNP formulas against their literal definitions (docs/method.md §2–§5)."""

import pytest
import torch

from snp_core.errors import SNPError
from snp_core.importance import (L2Importance, RandomImportance, ReverseImportance, SNPImportance,
                                 attention_score_pairs, get_criterion, group_average, redundancy)


def literal_attention_scores(q: torch.Tensor, k: torch.Tensor, gamma: int) -> torch.Tensor:
    """ω_i = Σ_{j≤γ} |cos(σ_j u_j v_jᵀ, Q_i K_iᵀ)| with the N×N matrices flattened (§2.1)."""
    a = q @ k.T
    u, s, vh = torch.linalg.svd(a)
    scores = torch.zeros(q.shape[1], dtype=q.dtype)
    for i in range(q.shape[1]):
        term = torch.outer(q[:, i], k[:, i]).flatten()
        for j in range(gamma):
            comp = (s[j] * torch.outer(u[:, j], vh[j])).flatten()
            scores[i] += (comp @ term).abs() / (comp.norm() * term.norm())
    return scores


@pytest.mark.parametrize("n, d, gamma", [(24, 6, 1), (24, 6, 3), (30, 8, 8), (5, 8, 4)])
def test_cheap_form_equals_literal_nxn_formula(n, d, gamma):
    g = torch.Generator().manual_seed(n * d + gamma)
    q = torch.randn(2, 3, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(2, 3, n, d, generator=g, dtype=torch.float64)
    cheap = attention_score_pairs(q, k, gamma=gamma)
    assert cheap.shape == (2, 3, d)
    for b in range(2):
        for h in range(3):
            literal = literal_attention_scores(q[b, h], k[b, h], min(gamma, n, d))
            torch.testing.assert_close(cheap[b, h], literal, rtol=1e-9, atol=1e-9)


def test_energy_gamma_selects_the_fewest_components_holding_the_fraction():
    g = torch.Generator().manual_seed(0)
    # a rank-2 score matrix plus a little noise: 2 components hold > 90% of the energy
    base_q, base_k = torch.randn(40, 2, generator=g), torch.randn(40, 2, generator=g)
    mix = torch.randn(2, 8, generator=g)
    q = (base_q @ mix + 0.01 * torch.randn(40, 8, generator=g)).double()
    k = (base_k @ mix + 0.01 * torch.randn(40, 8, generator=g)).double()
    s = torch.linalg.svdvals(q @ k.T)
    assert (s[:2] ** 2).sum() / (s ** 2).sum() > 0.9
    by_energy = attention_score_pairs(q[None, None], k[None, None], gamma=0.9)[0, 0]
    torch.testing.assert_close(by_energy, literal_attention_scores(q, k, 2))


def test_sigma_weighting_weights_components_by_singular_value():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, 20, 5, generator=g).double(), torch.randn(1, 1, 20, 5, generator=g).double()
    s = torch.linalg.svdvals(q[0, 0] @ k[0, 0].T)[:2]
    one = attention_score_pairs(q, k, gamma=1)
    two = attention_score_pairs(q, k, gamma=2)
    weighted = attention_score_pairs(q, k, gamma=2, weighting="sigma")
    only_second = two - one
    torch.testing.assert_close(weighted, (s[0] * one + s[1] * only_second) / s.sum())


def test_redundancy_matches_its_definition_and_ranks_duplicates_lowest():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(6, 64, generator=g)  # random 64-d rows are nearly orthogonal
    w[4] = 3 * w[1]  # a neuron collinear with another: the most redundant pair
    score = redundancy(w)
    literal = torch.tensor([sum(1 - abs(torch.cosine_similarity(w[i], w[l], dim=0)) for l in range(6)) for i in range(6)])
    torch.testing.assert_close(score, literal, rtol=1e-5, atol=1e-5)
    assert set(score.argsort()[:2].tolist()) == {1, 4}


def test_group_average_is_tss_then_mean():
    # the SDK's worked example (docs/method.md §5)
    a = torch.tensor([11.0, 19, 38, 25, 46])
    b = torch.tensor([0.19, 0.11, 0.17, 0.15, 0.37])
    avg = group_average([a, b])
    torch.testing.assert_close(avg, torch.tensor([0.14, 0.13, 0.22, 0.17, 0.35]), atol=0.01, rtol=0)  # the SDK rounds to 2 digits
    assert avg.argsort()[:2].tolist() == [1, 0]  # a 40 % Add ratio removes channels 1 and 0


def test_baselines():
    g = torch.Generator().manual_seed(3)
    wq, wk, wv = (torch.randn(2, 4, 8, generator=g) for _ in range(3))
    per_image = torch.rand(5, 2, 4, generator=g)
    snp, rev = SNPImportance(), ReverseImportance()
    torch.testing.assert_close(rev.query_key(wq, wk, per_image), -snp.query_key(wq, wk, per_image))
    torch.testing.assert_close(rev.value(wv), -snp.value(wv))
    torch.testing.assert_close(SNPImportance(aggregate="median").query_key(wq, wk, per_image), per_image.median(0).values)
    torch.testing.assert_close(L2Importance().query_key(wq, wk, None), wq.norm(dim=-1) * wk.norm(dim=-1))
    assert torch.equal(RandomImportance(seed=7).value(wv), RandomImportance(seed=7).value(wv))
    assert not torch.equal(RandomImportance(seed=7).value(wv), RandomImportance(seed=8).value(wv))


@pytest.mark.parametrize("bad", [dict(gamma=0), dict(gamma=1.5), dict(gamma="8"), dict(weighting="x"), dict(aggregate="sum")])
def test_bad_criterion_settings_are_rejected(bad):
    with pytest.raises(SNPError, match=repr(next(iter(bad.values())))):
        get_criterion("snp", **bad)


def test_unknown_criterion():
    with pytest.raises(SNPError, match="'magic'.*snp"):
        get_criterion("magic")
