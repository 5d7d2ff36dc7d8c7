"""The paper's MAC figures of the unpruned models (the counters against FlopCounterMode: test_adapter_contract.py)."""

import pytest

import snp_core
from helpers import flop_counter_macs


@pytest.mark.parametrize("name,macs", [
    ("deit_tiny_patch16_224", 1_253_683_200),  # 1.254 G, docs/method.md §7.1
    ("efficientformer_l1", 1_291_284_736),     # ≈ 1.3 G, docs/method.md §9
])
def test_unpruned_models_have_the_papers_macs(name, macs):
    model = snp_core.create(name)
    adapter = snp_core.adapter_for(model, name)
    assert adapter.macs({g.name: g.width for g in adapter.groups()}) == snp_core.count_macs(model) == macs
    assert flop_counter_macs(model) == macs
