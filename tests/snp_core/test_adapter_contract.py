"""The adapter contract: every family in `snp_core.adapters.ADAPTERS`, checked the same way.

Nothing here names a family. Each registered adapter is checked on its own tiny
timm model (`Adapter.tiny_model`), with norms, biases, tokens, LayerScales,
attention biases and BatchNorm statistics randomised so that a slicing error
cannot hide behind timm's 1s and 0s, and weight matrices at unit gain so that one
neuron moves the logits by far more than the tolerance (asserted, so no check
below passes because a neuron hardly mattered):

* cutting nothing changes nothing, and neither does keeping every neuron of every
  group in a shuffled order: an index list that misses a tensor, or a tensor cut
  with another group's list, is invisible with identity lists but not shuffled ones;
* cutting one neuron of a group (one per head for per-head kinds, one head, one
  residual channel) gives what zeroing it in the uncut weights gives
  (`Adapter.zero_neuron`, which slices nothing). Where no zeroing is exact --
  residual channels that a LayerNorm normalises: cutting one changes the mean and
  variance over the others -- the adapter says so and the test checks a weaker,
  structural property instead: the cut deletes exactly that index from every tensor
  that has it and changes nothing else, and the cut model runs. (The shuffled plan
  above still checks those channels functionally: LayerNorm is permutation-equivariant.);
* `Adapter.macs` and `snp_core.count_macs` equal torch's FlopCounterMode, uncut and cut;
* the cut model exports to ONNX and TorchScript with parity, and the ONNX graph
  gathers, pads or masks no weight at run time;
* the plan saved with the weights rebuilds, by `snp_core.load`, a model with equal outputs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import exporters
import snp_core
from helpers import flop_counter_macs, randomize_norms, uniform_plan
from snp_core.adapters import ADAPTERS, Adapter
from snp_core.groups import KINDS, Group
from snp_core.models import input_size

# torch 2.14 marks torch.jit.save/load deprecated (FutureWarning); they still work and are what devices run.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

TOLERANCE = 1e-5  # max abs difference of logits that "the same output" allows
# Odd kept widths everywhere, q/k narrower than v, one head in three removed where a family has head groups.
RATIOS = dict(qk=0.4, v=0.3, ffn=0.55, embed=0.25, heads=0.34)


@dataclasses.dataclass
class Family:
    adapter: type[Adapter]
    model: nn.Module        # the tiny model, randomised; tests copy it before changing it
    groups: list[Group]
    uncut: snp_core.Plan    # the plan that removes nothing
    plan: snp_core.Plan     # RATIOS, SNP criterion on calibration images
    cut: nn.Module          # `model` cut to `plan`

    def prune(self, keep: dict[str, list]) -> nn.Module:
        return snp_core.prune(self.model, dataclasses.replace(self.uncut, keep=keep))


@pytest.fixture(scope="module", params=ADAPTERS, ids=lambda cls: cls.__name__)
def family(request: pytest.FixtureRequest) -> Family:
    cls: type[Adapter] = request.param
    name, kwargs = cls.tiny
    model = randomize_norms(unit_gain(cls.tiny_model()))
    groups = cls(model).groups()
    plan = snp_core.make_plan(model, name, snp_core.ratios.uniform(groups, **RATIOS), snp_core.get_criterion("snp"),
                              images(model, 4, seed=1), {"source": "tensor"}, batch_size=2,
                              model_kwargs=kwargs)
    return Family(cls, model, groups, uniform_plan(model, name), plan, snp_core.prune(model, plan))


def unit_gain(model: nn.Module) -> nn.Module:
    """Linear/conv weights drawn with std ``fan_in ** -0.5``: activations of order 1 throughout, so one neuron
    moves the logits far more than TOLERANCE (at timm's std 0.02 its share can be below it)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * m.weight[0].numel() ** -0.5)
    return model


def images(model: nn.Module, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *input_size(model), generator=torch.Generator().manual_seed(seed))


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def assert_same_output(a: nn.Module, b: nn.Module, what: str) -> None:
    x = images(a)
    diff = (run(a, x) - run(b, x)).abs().max().item()
    assert diff < TOLERANCE, f"{what}: max abs diff {diff:.2e}"


def test_the_tiny_model_belongs_to_its_family(family: Family) -> None:
    assert type(snp_core.adapter_for(family.model)) is family.adapter and not family.model.training
    assert {g.kind for g in family.groups} <= set(KINDS)
    assert family.plan.family == family.adapter.family


def test_cutting_nothing_changes_nothing(family: Family) -> None:
    assert family.uncut.widths == {g.name: g.width for g in family.groups}
    assert_same_output(snp_core.prune(family.model, family.uncut), family.model, "plan removing nothing")


def test_keeping_everything_in_a_shuffled_order_changes_nothing(family: Family) -> None:
    g = torch.Generator().manual_seed(0)

    def shuffled(width: int) -> list[int]:
        return torch.randperm(width, generator=g).tolist()

    keep = {grp.name: [shuffled(grp.width) for _ in range(grp.heads)] if grp.heads > 1 else shuffled(grp.width)
            for grp in family.groups}
    assert_same_output(family.prune(keep), family.model, "every group kept in a shuffled order")


def without(family: Family, group: Group, neurons: list) -> dict[str, list]:
    """The uncut plan's kept indices less `neurons` of `group` (a removed head takes its neurons' lists along)."""
    keep = copy.deepcopy(family.uncut.keep)
    if group.heads > 1:
        keep[group.name] = [[j for j in range(group.width) if j != i] for _, i in neurons]
        return keep
    (n,) = neurons
    keep[group.name] = [j for j in range(group.width) if j != n]
    for other in family.groups:
        if other.head_group == group.name:
            keep[other.name] = [kept for h, kept in enumerate(keep[other.name]) if h != n]
    return keep


def assert_only_index_deleted(original: nn.Module, cut: nn.Module, width: int, kept: list[int], what: str) -> None:
    """Every tensor of `cut` is the original's with index `width - kept` deleted along each dimension that shrank."""
    before, after = original.state_dict(), cut.state_dict()
    assert before.keys() == after.keys(), what
    idx, shrunk = torch.tensor(kept), 0
    for name, tensor in after.items():
        ref = before[name]
        for dim, (old, new) in enumerate(zip(ref.shape, tensor.shape)):
            if old != new:
                assert (old, new) == (width, width - 1), f"{what}: {name} {tuple(ref.shape)} -> {tuple(tensor.shape)}"
                ref, shrunk = ref.index_select(dim, idx), shrunk + 1
        assert torch.equal(tensor, ref), f"{what}: {name} holds other values than the uncut one less the channel"
    assert shrunk, f"{what}: no tensor lost the channel"
    assert torch.isfinite(run(cut, images(original))).all(), what


@pytest.mark.parametrize("kind", KINDS)
def test_cutting_one_neuron_equals_zeroing_it(family: Family, kind: str) -> None:
    groups = [g for g in family.groups if g.kind == kind]
    if not groups:
        pytest.skip(f"{family.adapter.__name__} has no {kind} groups")
    for group in groups:
        # one neuron per head, a different one in each; else one from the middle (a head: not the first)
        neurons = ([(h, (5 * h + 3) % group.width) for h in range(group.heads)] if group.heads > 1
                   else [group.width // 2])
        what = f"{group.name} without {neurons}"
        cut = family.prune(without(family, group, neurons))
        zeroed = copy.deepcopy(family.model)
        adapter = snp_core.adapter_for(zeroed)
        try:
            for neuron in neurons:
                adapter.zero_neuron(group.name, neuron)
        except NotImplementedError:  # no exact zeroing: the weaker property (module docstring)
            assert_only_index_deleted(family.model, cut, group.width, without(family, group, neurons)[group.name], what)
            continue
        assert_same_output(cut, zeroed, what)
        x = images(family.model)  # not vacuous: the zeroed neurons did change the output
        moved = (run(zeroed, x) - run(family.model, x)).abs().max().item()
        assert moved > 100 * TOLERANCE, f"{what}: zeroing moved the logits by {moved:.1e} only"


def test_macs_agree_with_flop_counter_mode(family: Family) -> None:
    original = family.adapter(family.model).macs({g.name: g.width for g in family.groups})
    assert original == family.plan.macs["original"] == snp_core.count_macs(family.model)
    assert original == flop_counter_macs(family.model)
    pruned = family.plan.macs["pruned"]  # the adapter's `macs` of the plan's widths
    assert pruned == snp_core.count_macs(family.cut) == flop_counter_macs(family.cut)
    assert pruned < original


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_cut_model_exports_with_parity(family: Family, fmt: str, tmp_path: Path) -> None:
    art = exporters.export(family.cut, fmt, tmp_path, input_shape=(1, *input_size(family.cut)),
                           source=family.plan.model, variant="snp:contract", plan=family.plan)
    m = art.manifest
    assert m["parity"]["max_abs_diff"] < m["parity"]["tolerance"] == exporters.TOLERANCE
    assert m["macs"] == m["plan_macs"] == family.plan.macs["pruned"]
    assert m["params"] == snp_core.count_params(family.cut)
    if fmt == "onnx":  # no index_select of kept neurons from weights, no padding back, no masks
        check = m["graph_check"]
        assert (check["weight_gathers"], check["index_ops"], check["pads"], check["masks"]) == ([], {}, 0, [])
        assert check["clean"]


def test_the_saved_plan_rebuilds_the_same_model(family: Family, tmp_path: Path) -> None:
    snp_core.save(tmp_path, family.cut, family.plan)
    doc = json.loads((tmp_path / "plan.json").read_text())  # plain JSON, nothing pickled
    name, kwargs = family.adapter.tiny
    assert (doc["format"], doc["family"], doc["criterion"]["name"]) == ("snp-plan/1", family.adapter.family, "snp")
    assert (doc["model"], doc["model_kwargs"]) == (name, json.loads(json.dumps(kwargs)))
    assert (tmp_path / "model.safetensors").read_bytes()[:8] != b"PK\x03\x04"  # not a torch zip/pickle
    x = images(family.model)
    expected = run(family.cut, x)
    for again in (snp_core.load(tmp_path), snp_core.load(tmp_path / "plan.json", tmp_path / "model.safetensors")):
        assert torch.equal(run(again, x), expected)
