"""Acceptance 2: surgery is exact (zero pruning, one Q/K pair, plan round-trip)."""

import json

import pytest
import torch

import snp_core
from helpers import randomize_norms, tiny_vit, uniform_plan


@pytest.mark.parametrize("overrides", [
    {},                                                   # DeiT/ViT layout: cls token, pos_embed over it
    {"init_values": 0.1, "no_embed_class": True},          # DeiT-III layout: LayerScale, pos_embed on patches only
    {"class_token": False, "global_pool": "avg", "fc_norm": True, "reg_tokens": 2},
])
def test_pruning_nothing_changes_nothing(overrides):
    model = tiny_vit(**overrides)
    randomize_norms(model)
    plan = uniform_plan(model, "tiny", qk=0.0, v=0.0, ffn=0.0, embed=0.0)
    pruned = snp_core.prune(model, plan)
    assert all(isinstance(b.attn, snp_core.PrunedAttention) for b in pruned.blocks)
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        assert (pruned(x) - model(x)).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_pruning_nothing_changes_nothing_on_timm_models(name):
    model = snp_core.create(name)
    randomize_norms(model)
    pruned = snp_core.prune(model, uniform_plan(model, name))
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert (pruned(x) - model(x)).abs().max() < 1e-5


def logits(attn, x: torch.Tensor) -> torch.Tensor:
    """Pre-softmax attention logits [B, H, N, N] (scale included) of either attention module."""
    if isinstance(attn, snp_core.PrunedAttention):
        q, k, _ = attn.project(x)
    else:
        B, N, _ = x.shape
        q, k, _ = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    return (q * attn.scale) @ k.transpose(-2, -1)


def test_removing_one_qk_pair_removes_exactly_its_rank_one_term():
    model = tiny_vit()
    attn = model.blocks[1].attn
    H, d = attn.num_heads, attn.head_dim
    plan = uniform_plan(model, "tiny")
    head, pair = 1, 5
    # drop pair 5 of head 1; every head keeps the same count, so the others drop their last pair
    plan.keep["blocks.1.qk"] = [[i for i in range(d) if i != (pair if h == head else d - 1)] for h in range(H)]
    pruned = snp_core.prune(model, plan)

    x = torch.randn(2, 9, 48)
    with torch.no_grad():
        before, after = logits(attn, x), logits(pruned.blocks[1].attn, x)
        B, N, _ = x.shape
        q, k, _ = attn.qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
        for h, dropped in ((head, pair), (0, d - 1), (2, d - 1)):
            term = attn.scale * q[:, h, :, dropped, None] * k[:, h, None, :, dropped]  # Q_i K_iᵀ · scale
            torch.testing.assert_close(before[:, h] - after[:, h], term, rtol=1e-5, atol=1e-6)


def test_plan_round_trip_rebuilds_the_same_model(tmp_path):
    model = snp_core.create("deit_tiny_patch16_224")
    randomize_norms(model)
    calib = torch.randn(8, 3, 224, 224)
    ratios = snp_core.ratios.resolve("paper", "deit_tiny_patch16_224")
    plan = snp_core.make_plan(model, "deit_tiny_patch16_224", ratios, snp_core.get_criterion("snp"), calib,
                              {"source": "tensor"}, batch_size=4, progress=False)
    pruned = snp_core.prune(model, plan)
    snp_core.save(tmp_path, pruned, plan)

    doc = json.loads((tmp_path / "plan.json").read_text())  # plain JSON, nothing pickled
    assert doc["format"] == "snp-plan/1" and doc["criterion"]["name"] == "snp"
    assert doc["widths"]["blocks.0.qk"] == 39 and len(doc["keep"]["blocks.0.qk"]) == 3
    assert (tmp_path / "model.safetensors").read_bytes()[:8] != b"PK\x03\x04"  # not a torch zip/pickle

    rebuilt = snp_core.load(tmp_path / "plan.json", tmp_path / "model.safetensors")
    again = snp_core.load(tmp_path)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        ref = pruned(x)
        assert torch.equal(rebuilt(x), ref) and torch.equal(again(x), ref)


def test_different_criteria_keep_different_neurons():
    model = snp_core.create("deit_tiny_patch16_224")
    ratios = snp_core.ratios.resolve("paper", "deit_tiny_patch16_224")
    calib = torch.randn(4, 3, 224, 224)
    plans = {name: snp_core.make_plan(model, "deit_tiny_patch16_224", ratios, snp_core.get_criterion(name), calib,
                                      progress=False) for name in ("snp", "reverse", "l2", "random")}
    assert all(p.widths == plans["snp"].widths for p in plans.values())
    keeps = [p.keep["blocks.3.qk"] for p in plans.values()]
    assert all(a != b for i, a in enumerate(keeps) for b in keeps[i + 1:])
    # reverse keeps the lowest-scored pairs: no overlap with SNP when less than half is kept
    snp_kept, rev_kept = plans["snp"].keep["blocks.7.qk"][0], plans["reverse"].keep["blocks.7.qk"][0]
    assert len(snp_kept) == 20 and not set(snp_kept) & set(rev_kept)
