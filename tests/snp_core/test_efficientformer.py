"""EfficientFormer-L1 (docs/method.md §11): what only this family has: named configs, a headless model, errors.

Exact surgery (the interleaved per-head qkv rows, the conv MLPs' BatchNorms, the
attention-bias table after loading weights and in the ONNX graph), MACs, export
and plans are checked for every family in test_adapter_contract.py, on
`EfficientFormerAdapter.tiny`.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import snp_core
from helpers import randomize_norms, uniform_plan
from snp_core import ratios as ratio_sources
from snp_core.adapters import EfficientFormerAdapter
from snp_core.adapters.efficientformer import PrunedMeta3DAttention
from snp_core.errors import RatioError, UnsupportedModelError

NAME = "efficientformer_l1"
ATTN = "stages.3.blocks.4"  # the Meta3D block (stages.3.blocks.3 is Flat)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return snp_core.create(NAME)


def config_plan(model: nn.Module, config: str) -> snp_core.Plan:
    return snp_core.make_plan(model, NAME, ratio_sources.resolve(config, NAME), snp_core.get_criterion("l2"))


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def test_a_model_without_heads_cuts_exactly():
    name, kwargs = EfficientFormerAdapter.tiny
    model = randomize_norms(snp_core.create(name, **{**kwargs, "num_classes": 0}))  # head and head_dist: Identity
    pruned = snp_core.prune(model, uniform_plan(model, name))
    assert isinstance(pruned.stages[3].blocks[2].token_mixer, PrunedMeta3DAttention)
    x = torch.randn(1, 3, 224, 224)
    assert (run(pruned, x) - run(model, x)).abs().max() < 1e-5
    cut = snp_core.prune(model, uniform_plan(model, name, embed=0.25))
    assert run(cut, x).shape == (1, 36) == (1, cut.num_features)


@pytest.mark.parametrize("config,gmacs", [("efficientformer_l1_0.6g", 0.6), ("efficientformer_l1_0.5g", 0.5)])
def test_named_configs_measure_their_gmacs(config, gmacs):
    model = snp_core.create(NAME)
    plan = config_plan(model, config)
    pruned = snp_core.prune(model, plan, inplace=True)
    macs = snp_core.count_macs(pruned)
    assert abs(macs / 1e9 - gmacs) <= 0.03 * gmacs
    assert macs == plan.macs["pruned"]
    assert all(w % 16 == 0 for w in plan.widths.values())  # the configs are made of GEMM-friendly widths
    assert pruned.stages[2].downsample.conv.out_channels == plan.widths["stages.2.embed"]
    assert torch.isfinite(run(pruned, torch.randn(1, 3, 224, 224))).all()


def test_paper_resolves_to_the_0_6g_config():
    assert ratio_sources.paper_config_for(NAME) == "efficientformer_l1_0.6g"
    assert ratio_sources.paper_config_for("deit_small_patch16_224") == "deit_small"


def test_ratio_errors_are_one_line(model):
    groups = snp_core.adapter_for(model, NAME).groups()
    with pytest.raises(RatioError, match=f"ratio 0.99 for {ATTN}.qk removes all 32 neurons of every head") as bad:
        snp_core.kept_widths(groups, {f"{ATTN}.qk": 0.99})
    assert "\n" not in str(bad.value)
    with pytest.raises(RatioError, match="unknown layer group 'blocks.0.qk'"):
        snp_core.make_plan(model, NAME, {"blocks.0.qk": 0.5}, snp_core.get_criterion("l2"))


def test_check_refuses_what_it_cannot_prune(model):
    pruned = snp_core.prune(model, uniform_plan(model, NAME))
    with pytest.raises(UnsupportedModelError, match="already pruned"):
        snp_core.prune(pruned, uniform_plan(model, NAME))
    odd = snp_core.create(NAME)
    odd.stages[1].blocks[1] = nn.Identity()
    with pytest.raises(UnsupportedModelError, match="block type Identity at stages.1.blocks.1"):
        snp_core.adapter_for(odd, NAME)
