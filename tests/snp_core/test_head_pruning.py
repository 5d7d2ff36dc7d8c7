"""Whole-head pruning combined with SNP (issue 6; docs/method.md §6).

Removing a head equals zeroing it, and plans with heads round-trip: test_adapter_contract.py.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import snp_core
from helpers import randomize_norms, tiny_vit
from snp_core import ratios as ratio_sources
from snp_core.adapters import VitAdapter
from snp_core.errors import PlanError, RatioError

ROOT = Path(__file__).resolve().parents[2]


def plan_for(model, criterion: str = "l2", head_criterion: str = "proj_l1", **ratios) -> snp_core.Plan:
    """A plan for a `tiny_vit` (hand-built: its timm name and kwargs are given)."""
    groups = snp_core.adapter_for(model).groups()
    name, kwargs = VitAdapter.tiny
    return snp_core.make_plan(model, name, ratio_sources.uniform(groups, **ratios), criterion,
                              head_criterion=head_criterion, model_kwargs=dict(kwargs, mlp_ratio=4.0))


@pytest.mark.parametrize("head_criterion", ["proj_l1", "qk_sum"])
def test_head_criteria_remove_the_weakest_head(head_criterion):
    model = tiny_vit()
    weak = {0: 2, 1: 0}  # block -> head made weak by the measure each criterion reads
    with torch.no_grad():
        for b, h in weak.items():
            attn = model.blocks[b].attn
            if head_criterion == "proj_l1":
                attn.proj.weight[:, h * 16:(h + 1) * 16] *= 0.01
            else:  # l2 Q/K pair scores are ‖W_q,i‖·‖W_k,i‖: shrink the head's query rows
                attn.qkv.weight[h * 16:(h + 1) * 16] *= 0.01
    plan = plan_for(model, head_criterion=head_criterion, heads=0.34)
    for b, h in weak.items():
        assert h not in plan.keep[f"blocks.{b}.heads"]
    assert plan.criterion["heads"] == head_criterion


def test_snp_prunes_neurons_within_the_surviving_heads():
    model = tiny_vit()
    plan = plan_for(model, heads=0.34, qk=0.5, v=0.25)
    assert [len(plan.keep[f"blocks.{b}.qk"]) for b in range(2)] == [2, 2]  # one list per surviving head
    pruned = snp_core.prune(model, plan)
    attn = pruned.blocks[0].attn
    assert (attn.num_heads, attn.qk_dim, attn.v_dim) == (2, 8, 12)
    assert attn.scale == 16 ** -0.5
    assert snp_core.count_macs(pruned, (3, 32, 32)) == plan.macs["pruned"]


def test_plans_without_head_groups_still_load():
    """Plans written before head pruning existed have no ``blocks.*.heads``: every head is kept."""
    model = tiny_vit()
    randomize_norms(model)
    doc = plan_for(model, qk=0.25).to_dict()
    for key in ("keep", "widths", "ratios"):
        doc[key] = {k: v for k, v in doc[key].items() if not k.endswith(".heads")}
    pruned = snp_core.prune(model, snp_core.Plan.from_dict(doc))
    assert all(b.attn.num_heads == 3 for b in pruned.blocks)


def test_plan_with_wrong_head_count_is_refused():
    model = tiny_vit()
    plan = plan_for(model, heads=0.34)
    plan.keep["blocks.0.qk"] = plan.keep["blocks.0.qk"] + [plan.keep["blocks.0.qk"][0]]  # 3 lists for 2 heads
    with pytest.raises(PlanError, match="blocks.0.qk"):
        snp_core.prune(model, plan)


def test_removing_every_head_is_a_clear_error():
    model = tiny_vit()
    with pytest.raises(RatioError, match="removes all 3 heads"):
        plan_for(model, heads=0.9)


def test_deit_base_head_config_measures_3_5_gmacs():
    name = "deit_base_patch16_224"
    model = snp_core.create(name)
    plan = snp_core.make_plan(model, name, ratio_sources.resolve("deit_base_head_3.5g", name),
                              snp_core.get_criterion("l2"))
    pruned = snp_core.prune(model, plan, inplace=True)
    macs = snp_core.count_macs(pruned)
    assert abs(macs / 3.5e9 - 1) <= 0.03
    assert all(len(plan.keep[f"blocks.{b}.heads"]) == 6 for b in range(12))  # heads removed show in the plan
    assert [b.attn.num_heads for b in pruned.blocks] == [6] * 12
    assert torch.isfinite(pruned(torch.randn(1, 3, 224, 224))).all()


def test_compress_cli_heads_hold_and_target(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench", "compress", "--weights", "random", "--criterion", "l2",
                        "--heads", "0.34", "--hold", "qk,v", "--target-gmacs", "0.5", "--head-criterion", "qk_sum",
                        "--out", str(tmp_path), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    paper = ratio_sources.resolve("paper", "deit_tiny_patch16_224")
    assert abs(plan["macs"]["pruned"] / 0.5e9 - 1) <= 0.02
    assert all(plan["ratios"][f"blocks.{b}.heads"] == 0.34 for b in range(12))
    assert all(plan["ratios"][f"blocks.{b}.{k}"] == paper[f"blocks.{b}.{k}"] for b in range(12) for k in ("qk", "v"))
    assert plan["criterion"]["heads"] == "qk_sum"
    assert all(len(plan["keep"][f"blocks.{b}.heads"]) == 2 for b in range(12))
