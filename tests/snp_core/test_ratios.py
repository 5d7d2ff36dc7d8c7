"""Ratio sources: uniform, files, --target-gmacs, --round-to, and their errors."""

import json

import pytest

import snp_core
from snp_core import ratios as ratio_sources
from snp_core.errors import RatioError


@pytest.fixture(scope="module")
def deit_tiny():
    model = snp_core.create("deit_tiny_patch16_224")
    adapter = snp_core.adapter_for(model)
    return model, adapter, adapter.groups()


def test_uniform_ratios_per_kind(deit_tiny):
    _, _, groups = deit_tiny
    ratios = ratio_sources.uniform(groups, qk=0.5, v=0.25, embed=0.1)
    widths = snp_core.kept_widths(groups, ratios)
    assert widths["blocks.5.qk"] == 32 and widths["blocks.5.v"] == 48
    assert widths["blocks.5.ffn"] == 768 and widths["embed"] == 173  # 192 - round(19.2)


def test_round_to_gives_multiples(deit_tiny):
    _, _, groups = deit_tiny
    widths = snp_core.kept_widths(groups, ratio_sources.resolve("paper", "deit_tiny_patch16_224"), round_to=8)
    assert all(widths[g.name] % 8 == 0 for g in groups if g.kind != "heads")
    assert widths["blocks.0.qk"] == 40 and widths["embed"] == 152  # 39 -> 40, 153 -> 152
    assert all(widths[g.name] == 3 for g in groups if g.kind == "heads")  # head counts are never rounded


@pytest.mark.parametrize("target", [0.9, 0.638, 0.4])
def test_target_gmacs_within_two_percent(deit_tiny, target):
    _, adapter, groups = deit_tiny
    paper = ratio_sources.resolve("paper", "deit_tiny_patch16_224")
    ratios = ratio_sources.scale_to_target(paper, groups, adapter.macs, target * 1e9)
    achieved = adapter.macs(snp_core.kept_widths(groups, ratios))
    assert abs(achieved - target * 1e9) <= 0.02 * target * 1e9
    # the pattern is scaled, not replaced: late blocks still lose more q/k than early ones
    assert ratios["blocks.11.qk"] > ratios["blocks.0.qk"]


def test_target_out_of_reach(deit_tiny):
    _, adapter, groups = deit_tiny
    with pytest.raises(RatioError, match="out of reach"):
        ratio_sources.scale_to_target(ratio_sources.uniform(groups, qk=0.5), groups, adapter.macs, 0.1e9)


def test_paper_file_format_and_errors(tmp_path, deit_tiny):
    _, _, groups = deit_tiny
    (tmp_path / "mine.json").write_text(json.dumps({"matmul": 0.5, "matmul_1": 0.25, "blocks_0_mlp_fc1": 0.5, "add_24": 0.1}))
    ratios = ratio_sources.resolve(str(tmp_path / "mine.json"), "deit_tiny_patch16_224")
    assert ratios == {"blocks.0.qk": 0.5, "blocks.0.v": 0.25, "blocks.0.ffn": 0.5, "embed": 0.1}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RatioError, match="bad.json.*not valid JSON"):
        ratio_sources.resolve(str(tmp_path / "bad.json"), "deit_tiny_patch16_224")
    with pytest.raises(RatioError, match="'blocks.99.qk'"):
        ratio_sources.validate({"blocks.99.qk": 0.5}, groups)
    with pytest.raises(RatioError, match="unknown ratio config 'deit_huge'"):
        ratio_sources.resolve("deit_huge", "deit_tiny_patch16_224")
    with pytest.raises(RatioError, match="no paper ratios for model 'vit_small_patch16_224'"):
        ratio_sources.resolve("paper", "vit_small_patch16_224")


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_range(deit_tiny, ratio):
    _, _, groups = deit_tiny
    with pytest.raises(RatioError, match=f"ratio {ratio}"):
        ratio_sources.uniform(groups, ffn=ratio)


def test_ratio_that_removes_every_neuron(deit_tiny):
    _, _, groups = deit_tiny
    with pytest.raises(RatioError, match="ratio 0.995 for blocks.0.qk removes all 64"):
        snp_core.kept_widths(groups, ratio_sources.uniform(groups, qk=0.995))
