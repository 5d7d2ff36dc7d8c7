"""The MAC counter against torch's own FlopCounterMode."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import snp_core

from helpers import uniform_plan


def torch_flops(model: torch.nn.Module) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, 224, 224))
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_counter_matches_flop_counter_mode_on_the_original(name):
    model = snp_core.create(name)
    for blk in model.blocks:
        blk.attn.fused_attn = False  # FlopCounterMode has no formula for the CPU flash kernel; matmuls it counts
    macs = snp_core.count_macs(model)
    assert 2 * macs == torch_flops(model)
    if name == "deit_tiny_patch16_224":
        assert macs == 1_253_683_200  # 1.254 G, SNP_SPEC §7.1


def test_counter_matches_flop_counter_mode_on_a_pruned_model():
    model = snp_core.create("deit_tiny_patch16_224")
    pruned = snp_core.prune(model, uniform_plan(model, "deit_tiny_patch16_224", qk=0.4, v=0.3, ffn=0.5, embed=0.25))
    macs = snp_core.count_macs(pruned)
    assert 2 * macs == torch_flops(pruned)
    assert macs < snp_core.count_macs(model) / 1.5
