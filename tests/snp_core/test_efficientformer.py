"""EfficientFormer-L1 adapter (SNP_SPEC §11): exact surgery, MACs, named configs, plans, export, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import exporters
import snp_core
from helpers import uniform_plan
from snp_core import ratios as ratio_sources
from snp_core.adapters.efficientformer import PrunedMeta3DAttention
from snp_core.errors import RatioError, UnsupportedModelError

# torch 2.14 marks torch.jit.save/load deprecated (FutureWarning); they still work and are what devices run.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

NAME = "efficientformer_l1"
ATTN = "stages.3.blocks.4"  # the Meta3D block (stages.3.blocks.3 is Flat)


def randomize(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, norms, biases, LayerScale gammas and attention biases.

    timm starts the gammas at 1e-5, BatchNorm as the identity and the attention
    biases at 0: with those, a wrongly sliced layer would hardly change the output.
    Done before any eval forward, so timm's attention-bias cache is filled afterwards.
    """
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):
                p.copy_(0.5 + 0.1 * noise)
            elif name.endswith("attention_biases"):
                p.copy_(noise)
            elif p.dim() == 1:
                p.copy_(0.2 * noise + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return randomize(snp_core.create(NAME))


def config_plan(model: nn.Module, config: str) -> snp_core.Plan:
    return snp_core.make_plan(model, NAME, ratio_sources.resolve(config, NAME), snp_core.get_criterion("l2"),
                              progress=False)


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


@pytest.mark.parametrize("kwargs", [{}, {"num_classes": 0}])
def test_pruning_nothing_changes_nothing(kwargs):
    model = randomize(snp_core.create(NAME, **kwargs))
    pruned = snp_core.prune(model, uniform_plan(model, NAME))
    assert isinstance(pruned.stages[3].blocks[4].token_mixer, PrunedMeta3DAttention)
    x = torch.randn(1, 3, 224, 224)
    assert (run(pruned, x) - run(model, x)).abs().max() < 1e-4


def test_removing_silent_neurons_changes_nothing():
    """Value and hidden neurons whose outgoing weights are zero contribute nothing: cutting them is exact.

    Checks the interleaved per-head qkv rows and proj columns of the Meta3D attention and the
    fc1/BN/fc2 slicing of the conv MLPs."""
    model = randomize(snp_core.create(NAME))
    meta3d, conv_mlp = model.stages[3].blocks[4], model.stages[1].blocks[0].mlp
    attn, mlp = meta3d.token_mixer, meta3d.mlp
    H, dv = attn.num_heads, attn.val_dim
    silent_v = [(h * 5 + 3) % dv for h in range(H)]  # one value neuron per head, a different one in each
    silent_hidden = [0, 7, 100]
    with torch.no_grad():
        for h, i in enumerate(silent_v):
            attn.proj.weight[:, h * dv + i] = 0
        conv_mlp.fc2.weight[:, silent_hidden] = 0
        mlp.fc2.weight[:, silent_hidden] = 0
    plan = uniform_plan(model, NAME)
    plan.keep[f"{ATTN}.v"] = [[j for j in range(dv) if j != i] for i in silent_v]
    for group in ("stages.1.blocks.0.ffn", f"{ATTN}.ffn"):
        plan.keep[group] = [j for j in plan.keep[group] if j not in silent_hidden]
    pruned = snp_core.prune(model, plan)
    assert pruned.stages[3].blocks[4].token_mixer.val_dim == dv - 1
    assert pruned.stages[1].blocks[0].mlp.norm1.num_features == conv_mlp.fc1.out_channels - 3
    x = torch.randn(1, 3, 224, 224)
    assert (run(pruned, x) - run(model, x)).abs().max() < 1e-4


def logits(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pre-softmax attention logits [B, H, N, N]: scaled q·kᵀ plus the learned position bias."""
    B, N, _ = x.shape
    q, k, _ = attn.qkv(x).reshape(B, N, attn.num_heads, -1).transpose(1, 2).split(
        [attn.key_dim, attn.key_dim, attn.val_dim], dim=-1)
    return (q @ k.transpose(-2, -1)) * attn.scale + attn.get_attention_biases(x.device)


def test_removing_one_qk_pair_removes_exactly_its_rank_one_term(model):
    attn = model.stages[3].blocks[4].token_mixer
    H, d = attn.num_heads, attn.key_dim
    plan = uniform_plan(model, NAME)
    head, pair = 1, 5
    # drop pair 5 of head 1; every head keeps the same count, so the others drop their last pair
    plan.keep[f"{ATTN}.qk"] = [[i for i in range(d) if i != (pair if h == head else d - 1)] for h in range(H)]
    pruned_attn = snp_core.prune(model, plan).stages[3].blocks[4].token_mixer
    assert pruned_attn.key_dim == d - 1 and pruned_attn.scale == 32 ** -0.5  # the original scale (§2.3)

    x = torch.randn(2, 49, attn.qkv.in_features)
    with torch.no_grad():
        before, after = logits(attn, x), logits(pruned_attn, x)
        q, k, _ = attn.qkv(x).reshape(2, 49, H, -1).transpose(1, 2).split([d, d, attn.val_dim], dim=-1)
        for h in range(H):
            dropped = pair if h == head else d - 1
            term = attn.scale * q[:, h, :, dropped, None] * k[:, h, None, :, dropped]  # Q_i K_iᵀ · scale
            torch.testing.assert_close(before[:, h] - after[:, h], term, rtol=1e-5, atol=1e-5)


def test_analytic_macs_match_the_hook_counter_and_flop_counter_mode(model):
    adapter = snp_core.adapter_for(model, NAME)
    groups = adapter.groups()
    original = snp_core.count_macs(model)
    assert adapter.macs({g.name: g.width for g in groups}) == original == 1_291_284_736  # ≈ 1.3 G (§9)
    plan = uniform_plan(model, NAME, qk=0.4, v=0.3, ffn=0.55, embed=0.25)  # odd widths everywhere
    pruned = snp_core.prune(model, plan)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        pruned(torch.zeros(1, 3, 224, 224))
    assert snp_core.count_macs(pruned) == plan.macs["pruned"] == counter.get_total_flops() // 2
    assert plan.macs["pruned"] < original / 2


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


def test_plan_round_trip_rebuilds_the_same_model(model, tmp_path: Path):
    ratios = ratio_sources.resolve("efficientformer_l1_0.6g", NAME)
    plan = snp_core.make_plan(model, NAME, ratios, snp_core.get_criterion("snp"), torch.randn(2, 3, 224, 224),
                              {"source": "tensor"}, batch_size=2, progress=False)
    pruned = snp_core.prune(model, plan)
    snp_core.save(tmp_path, pruned, plan)
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["family"] == "efficientformer" and len(doc["keep"][f"{ATTN}.qk"]) == 8

    again = snp_core.load(tmp_path)  # weights loaded after surgery: the bias table must follow them
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(run(again, x), run(pruned, x))


@pytest.fixture(scope="module")
def pruned_05(model) -> tuple[nn.Module, snp_core.Plan]:
    plan = config_plan(model, "efficientformer_l1_0.5g")
    pruned = snp_core.prune(model, plan)
    run(pruned, torch.randn(1, 3, 224, 224))  # an eager forward first, as a benchmark would
    return pruned, plan


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_pruned_model_exports_with_parity(pruned_05, fmt, tmp_path: Path):
    pruned, plan = pruned_05
    art = exporters.export(pruned, fmt, tmp_path, source=NAME, variant="snp:efficientformer_l1_0.5g", plan=plan)
    assert art.manifest["parity"]["max_abs_diff"] < 1e-3
    assert art.manifest["macs"] == plan.macs["pruned"]
    if fmt == "onnx":  # the attention-bias table is a constant: no gather of a weight at run time
        assert art.manifest["graph_check"]["clean"], art.manifest["graph_check"]


def test_ratio_errors_are_one_line(model):
    groups = snp_core.adapter_for(model, NAME).groups()
    with pytest.raises(RatioError, match=f"ratio 0.99 for {ATTN}.qk removes all 32 neurons of every head") as bad:
        snp_core.kept_widths(groups, {f"{ATTN}.qk": 0.99})
    assert "\n" not in str(bad.value)
    with pytest.raises(RatioError, match="unknown layer group 'blocks.0.qk'"):
        snp_core.make_plan(model, NAME, {"blocks.0.qk": 0.5}, snp_core.get_criterion("l2"), progress=False)


def test_check_refuses_what_it_cannot_prune(model):
    pruned = snp_core.prune(model, uniform_plan(model, NAME))
    with pytest.raises(UnsupportedModelError, match="already pruned"):
        snp_core.prune(pruned, uniform_plan(model, NAME))
    odd = snp_core.create(NAME)
    odd.stages[1].blocks[1] = nn.Identity()
    with pytest.raises(UnsupportedModelError, match="block type Identity at stages.1.blocks.1"):
        snp_core.adapter_for(odd, NAME)
