"""Acceptance 1: the paper's ratio files give the paper's architectures (docs/method.md §7)."""

import json
from pathlib import Path

import pytest
import torch

import snp_core
from snp_core import ratios as ratio_sources

PAPER_FILES_DIR = Path(__file__).resolve().parents[2] / "docs" / "paper_ratios"  # the paper repository's files

# Kept widths per block, docs/method.md §7.3 (the expected architecture, stated by the spec).
EXPECTED = {
    "deit_tiny": dict(
        model="deit_tiny_patch16_224", gmacs=0.64, embed=153,
        qk=[39, 39, 39, 32, 26, 32, 26, 20, 20, 20, 20, 20],
        v=[51, 51, 38, 31, 38, 19, 38, 38, 31, 25, 19, 19],
        ffn=[614, 614, 614, 614, 614, 460, 537, 537, 614, 537, 460, 383]),
    "deit_small": dict(
        model="deit_small_patch16_224", gmacs=2.04, embed=307,
        qk=[25] * 7 + [13] * 5,
        v=[51, 38, 38, 38, 31, 31, 31, 25, 19, 19, 12, 12],
        ffn=[1228] * 5 + [1075, 1228, 921, 921, 921, 307, 307]),
    "deit_small_1.3g": dict(
        model="deit_small_patch16_224", gmacs=1.27, embed=345,
        qk=[26, 20, 20] + [13] * 9,
        v=[12, 19, 19] + [12] * 9,
        ffn=[1382, 1075, 1075] + [307] * 9),
    "deit_base": dict(
        model="deit_base_patch16_224", gmacs=6.32, embed=538,
        qk=[19, 19, 19, 19, 19, 26, 19, 19, 19, 19, 26, 19],
        v=[19, 19, 19, 19, 19, 26, 19, 26, 19, 19, 38, 32],
        ffn=[2150, 1229, 2150, 2150, 2150, 1536, 2150, 1843, 2150, 1843, 1843, 922]),
}
PAPER_FILES = {"deit_tiny": "DeiT_t.json", "deit_small": "DeiT_s.json", "deit_small_1.3g": "DeiT_s_small.json",
               "deit_base": "DeiT_b.json"}


@pytest.mark.parametrize("config", list(EXPECTED))
def test_paper_ratios_build_the_paper_architecture(config):
    exp = EXPECTED[config]
    model = snp_core.create(exp["model"])
    plan = snp_core.make_plan(model, exp["model"], ratio_sources.resolve(config, exp["model"]),
                              snp_core.get_criterion("l2"))
    pruned = snp_core.prune(model, plan, inplace=True)

    # widths read off the real pruned modules, not off the plan
    assert pruned.patch_embed.proj.out_channels == exp["embed"]
    assert pruned.pos_embed.shape[-1] == pruned.cls_token.shape[-1] == pruned.norm.weight.numel() == exp["embed"]
    assert [b.attn.qk_dim for b in pruned.blocks] == exp["qk"]
    assert [b.attn.v_dim for b in pruned.blocks] == exp["v"]
    assert [b.mlp.fc1.out_features for b in pruned.blocks] == exp["ffn"]
    assert all(b.attn.scale == 64 ** -0.5 for b in pruned.blocks)

    macs = snp_core.count_macs(pruned)
    assert macs == plan.macs["pruned"]  # the fast analytic count used by --target-gmacs agrees
    assert abs(macs / 1e9 - exp["gmacs"]) <= 0.03 * exp["gmacs"]
    out = pruned(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("config", list(PAPER_FILES))
def test_shipped_configs_equal_the_paper_files(config):
    model = EXPECTED[config]["model"]
    original = ratio_sources.resolve(str(PAPER_FILES_DIR / PAPER_FILES[config]), model)
    assert original == ratio_sources.resolve(config, model)
    assert len(original) == 37 and json.loads((PAPER_FILES_DIR / PAPER_FILES[config]).read_text())


def test_paper_resolves_to_the_models_first_config():
    assert ratio_sources.resolve("paper", "deit_small_patch16_224") == ratio_sources.resolve("deit_small", "deit_small_patch16_224")
