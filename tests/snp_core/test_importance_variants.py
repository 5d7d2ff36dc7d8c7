"""The geometric-median baseline and SNP's redundancy/magnitude options (docs/method.md §14)."""

import json

import pytest
import torch

import snp_core
from snp_core.errors import SNPError
from snp_core.importance import (CRITERIA, GeometricMedianImportance, SNPImportance, criterion_from_options,
                                 get_criterion, redundancy)


def literal_distance_sums(rows: torch.Tensor) -> torch.Tensor:
    """Σ_l ‖w_i − w_l‖, one pair at a time."""
    return torch.tensor([sum(float((rows[i] - rows[l]).norm()) for l in range(len(rows))) for i in range(len(rows))])


def test_gm_scores_the_mean_of_the_other_rows_lowest():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 16, generator=g)
    w[3] = torch.cat([w[:3], w[4:]]).mean(0)  # the centre of the others: any of them stands in for it
    score = GeometricMedianImportance().hidden(w)
    torch.testing.assert_close(score, literal_distance_sums(w), rtol=1e-5, atol=1e-5)
    assert score.argmin().item() == 3


def test_gm_scores_each_head_on_its_own():
    g = torch.Generator().manual_seed(1)
    wv = torch.randn(3, 5, 8, generator=g)
    gm = GeometricMedianImportance()
    score = gm.value(wv)
    assert score.shape == (3, 5)
    for h in range(3):
        torch.testing.assert_close(score[h], literal_distance_sums(wv[h]), rtol=1e-5, atol=1e-5)
    moved = wv.clone()
    moved[2] *= 10  # another head's rows change: heads 0 and 1 keep their scores
    torch.testing.assert_close(gm.value(moved)[:2], score[:2])


def test_gm_query_key_uses_the_concatenated_pair_rows_per_head():
    g = torch.Generator().manual_seed(2)
    wq, wk = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    score = GeometricMedianImportance().query_key(wq, wk, None)
    for h in range(2):
        torch.testing.assert_close(score[h], literal_distance_sums(torch.cat([wq[h], wk[h]], dim=1)),
                                   rtol=1e-5, atol=1e-5)


def test_gm_channels_concatenate_every_producers_row():
    g = torch.Generator().manual_seed(3)
    producers = [torch.randn(6, 4, generator=g), torch.randn(6, 3, 2, 2, generator=g), torch.randn(6, 9, generator=g)]
    rows = torch.cat([producers[0], producers[1].reshape(6, -1), producers[2]], dim=1)
    score = GeometricMedianImportance().channels(producers)
    torch.testing.assert_close(score, literal_distance_sums(rows), rtol=1e-5, atol=1e-5)
    # not the average of per-producer scores: one producer's distances alone rank differently
    assert not torch.allclose(score, literal_distance_sums(producers[0]), rtol=1e-3)


def weights(seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 6, 12, generator=g), torch.randn(2, 6, 12, generator=g),
            torch.randn(2, 6, 12, generator=g) * torch.rand(2, 6, 1, generator=g), torch.randn(10, 12, generator=g))


def test_inverted_reverses_the_value_and_hidden_ranking_and_keeps_query_key():
    wq, wk, wv, fc1 = weights()
    snp, inverted = get_criterion("snp"), get_criterion("snp_inverted")
    for paper_score, inverted_score in ((snp.value(wv).flatten(), inverted.value(wv).flatten()),
                                        (snp.hidden(fc1), inverted.hidden(fc1))):
        assert torch.equal(paper_score.argsort(descending=True), inverted_score.argsort())  # random rows: no ties
    per_image = torch.rand(3, 2, 6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(inverted.query_key(wq, wk, per_image), snp.query_key(wq, wk, per_image))
    g = torch.Generator().manual_seed(6)
    q, k = torch.randn(2, 2, 9, 6, generator=g), torch.randn(2, 2, 9, 6, generator=g)
    assert torch.equal(inverted.qk_per_image(q, k), snp.qk_per_image(q, k))
    producers = [fc1[:, :6], wv.reshape(12, 12)[:10]]
    assert torch.equal(inverted.channels(producers), snp.channels(producers))


def test_magnitude_multiplies_the_paper_scores_by_the_norms():
    _, _, wv, fc1 = weights()
    snp, magnitude = get_criterion("snp"), get_criterion("snp_magnitude")
    g = torch.Generator().manual_seed(7)
    q, k = torch.randn(2, 2, 9, 6, generator=g), torch.randn(2, 2, 9, 6, generator=g) * 3
    norms = torch.tensor([[[float(q[b, h, :, i].norm() * k[b, h, :, i].norm()) for i in range(6)]
                           for h in range(2)] for b in range(2)])
    torch.testing.assert_close(magnitude.qk_per_image(q, k), snp.qk_per_image(q, k) * norms)
    row_norms = torch.tensor([[float(wv[h, i].norm()) for i in range(6)] for h in range(2)])
    torch.testing.assert_close(magnitude.value(wv), snp.value(wv) * row_norms)
    torch.testing.assert_close(magnitude.hidden(fc1), redundancy(fc1) * torch.stack([r.norm() for r in fc1]))
    both = get_criterion("snp_magnitude_inverted")
    torch.testing.assert_close(both.hidden(fc1), (len(fc1) - redundancy(fc1)) * torch.stack([r.norm() for r in fc1]))


def test_default_params_are_the_papers_and_variants_record_theirs():
    default = {"gamma": 0.9, "weighting": "none", "aggregate": "mean", "channel_score": "redundancy"}
    assert json.dumps(SNPImportance().params()) == json.dumps(default)
    assert json.dumps(criterion_from_options("snp", seed=3, redundancy=None).params()) == json.dumps(default)
    assert get_criterion("snp_inverted").params() == {**default, "redundancy": "inverted"}
    assert get_criterion("snp_magnitude_inverted", gamma=4).params() == {**default, "gamma": 4,
                                                                         "redundancy": "inverted", "magnitude": True}
    for name in CRITERIA:  # a plan's recorded name and params rebuild its criterion
        crit = get_criterion(name)
        assert crit.name == name and get_criterion(name, **crit.params()).params() == crit.params()


@pytest.mark.parametrize("name, bad, accepted", [
    ("snp", {"redundancy": "reversed"}, "paper, inverted"),
    ("snp", {"magnitude": "yes"}, "True or False"),
    ("snp", {"magnitude": 1}, "True or False"),
    ("snp_inverted", {"redundancy": "paper"}, "use 'snp'"),
    ("snp_magnitude", {"magnitude": False}, "use 'snp'"),
])
def test_bad_option_values_are_refused(name, bad, accepted):
    with pytest.raises(SNPError, match=repr(next(iter(bad.values())))) as err:
        get_criterion(name, **bad)
    assert accepted in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_prunes_the_tiny_vit(name):
    adapter_cls = snp_core.adapters.VitAdapter
    model_name, kwargs = adapter_cls.tiny
    model = adapter_cls.tiny_model()
    groups = adapter_cls(model).groups()
    criterion = get_criterion(name)
    calib = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(8)) if criterion.uses_activations else None
    plan = snp_core.make_plan(model, model_name, snp_core.ratios.uniform(groups, qk=0.5, v=0.5, ffn=0.5, embed=0.25),
                              criterion, calib, batch_size=2, model_kwargs=kwargs)
    assert plan.criterion["name"] == name
    pruned = snp_core.prune(model, plan)
    with torch.inference_mode():
        out = pruned(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert snp_core.count_params(pruned) < snp_core.count_params(model)
