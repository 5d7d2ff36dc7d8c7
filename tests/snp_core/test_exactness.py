"""Acceptance 2 for the other timm ViT layouts; criteria keep different neurons.

Exactness, single-neuron removal, MACs, export and the plan round trip are checked
for every family, the DeiT layout of ViT included, in test_adapter_contract.py.
These are the layouts the ViT adapter also takes (LayerScale, prefix tokens,
pooling, a distillation head), on the same tiny model.
"""

import pytest
import torch

import snp_core
from helpers import flop_counter_macs, randomize_norms, uniform_plan
from snp_core.adapters import VitAdapter


@pytest.mark.parametrize("name,overrides", [
    ("deit_tiny_patch16_224", {"init_values": 0.1, "no_embed_class": True}),  # DeiT-III: LayerScale, no_embed_class
    ("deit_tiny_patch16_224", {"class_token": False, "global_pool": "avg", "fc_norm": True, "reg_tokens": 2}),
    ("deit_tiny_distilled_patch16_224", {}),                                   # dist_token and head_dist
], ids=["deit3", "avg-pool-registers", "distilled"])
def test_other_vit_layouts_cut_exactly_and_count_their_macs(name, overrides):
    model = randomize_norms(snp_core.create(name, **{**VitAdapter.tiny[1], **overrides}))
    pruned = snp_core.prune(model, uniform_plan(model, name))
    assert all(isinstance(b.attn, snp_core.PrunedAttention) for b in pruned.blocks)
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        assert (pruned(x) - model(x)).abs().max() < 1e-5

    plan = uniform_plan(model, name, qk=0.4, v=0.3, ffn=0.55, embed=0.25, heads=0.34)
    pruned = snp_core.prune(model, plan)
    assert plan.macs["original"] == snp_core.count_macs(model) == flop_counter_macs(model)
    assert plan.macs["pruned"] == snp_core.count_macs(pruned) == flop_counter_macs(pruned)
    with torch.inference_mode():
        assert torch.isfinite(pruned(x)).all()


def test_different_criteria_keep_different_neurons():
    model = snp_core.create("deit_tiny_patch16_224")
    ratios = snp_core.ratios.resolve("paper", "deit_tiny_patch16_224")
    calib = torch.randn(4, 3, 224, 224)
    plans = {name: snp_core.make_plan(model, "deit_tiny_patch16_224", ratios, snp_core.get_criterion(name), calib)
             for name in ("snp", "reverse", "l2", "random")}
    assert all(p.widths == plans["snp"].widths for p in plans.values())
    keeps = [p.keep["blocks.3.qk"] for p in plans.values()]
    assert all(a != b for i, a in enumerate(keeps) for b in keeps[i + 1:])
    # reverse keeps the lowest-scored pairs: no overlap with SNP when less than half is kept
    snp_kept, rev_kept = plans["snp"].keep["blocks.7.qk"][0], plans["reverse"].keep["blocks.7.qk"][0]
    assert len(snp_kept) == 20 and not set(snp_kept) & set(rev_kept)
