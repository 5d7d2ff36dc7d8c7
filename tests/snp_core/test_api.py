"""The Python API as docs/api.md shows it: every example runs, and the conventions it promises hold.

The examples are the ```python blocks of docs/api.md, run in order in one
namespace in a fresh folder (they build on each other), so the page cannot
drift from the code.  The tests after them pin what the page promises in words:
str paths, criteria by name or object, timm tags, and one-line refusals of a
model name, model kwargs or ratio file that do not fit the model.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import snp_core
from helpers import tiny_vit
from snp_core.adapters import VitAdapter

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "docs" / "api.md"


def examples() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", API.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_every_example_of_the_api_page_runs(tmp_path, monkeypatch, capsys):
    blocks = examples()
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md example {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "were made for 'deit_small_patch16_224', not 'deit_tiny_patch16_224'" in out
    assert "does not match the model, a 'deit_tiny_patch16_224'" in out
    assert (tmp_path / "out" / "deit_t_snp" / "plan.json").is_file()


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text and isinstance(error.value, snp_core.SNPError)
    return text


def test_hand_built_model_with_the_wrong_kwargs_is_refused():
    model = tiny_vit()  # VitAdapter.tiny's kwargs with mlp_ratio 4
    name, kwargs = VitAdapter.tiny
    with pytest.raises(snp_core.SNPError) as bad:
        snp_core.make_plan(model, name, ratios={}, criterion="l2")  # no kwargs: a full-size DeiT-T is not this
    assert re.search(r"model name 'deit_tiny_patch16_224' does not match the model: \S+ is \[\d+(, \d+)*\] in the "
                     r"model but \[\d+(, \d+)*\] in 'deit_tiny_patch16_224'", one_line(bad))
    with pytest.raises(snp_core.SNPError) as bad:
        snp_core.make_plan(model, ratios={}, criterion="l2")
    assert "pass its timm name" in one_line(bad)
    plan = snp_core.make_plan(model, name, ratios={}, criterion="l2", model_kwargs=dict(kwargs, mlp_ratio=4.0))
    assert plan.model == name and plan.model_kwargs["depth"] == 2


def test_tagged_names_reach_the_paper_ratios():
    tagged = snp_core.ratios.resolve("paper", "deit_tiny_patch16_224.fb_in1k")
    assert tagged == snp_core.ratios.resolve("paper", "deit_tiny_patch16_224")


def test_criteria_by_name_and_object_give_the_same_plan(tmp_path):
    model = snp_core.create(*VitAdapter.tiny[:1], **VitAdapter.tiny[1])
    ratios = {"qk": 0.5, "ffn": 0.5}
    by_name = snp_core.compress(model, ratios, criterion="l2", model_kwargs=VitAdapter.tiny[1]).plan
    by_object = snp_core.compress(model, ratios, criterion=snp_core.get_criterion("l2"),
                                  model_kwargs=VitAdapter.tiny[1]).plan
    assert by_name.keep == by_object.keep
    out = snp_core.Compressed(snp_core.prune(model, by_name), by_name).save(str(tmp_path / "p"))
    assert snp_core.load(str(out)).blocks[1].mlp.fc1.out_features == by_name.widths["blocks.1.ffn"]


def test_compress_refuses_what_is_not_a_model():
    with pytest.raises(TypeError, match="got int"):
        snp_core.compress(3)
    with pytest.raises(snp_core.SNPError) as bad:
        snp_core.compress("deit_tiny_patch16", criterion="l2")
    assert "unknown model 'deit_tiny_patch16'" in one_line(bad)


def test_calibration_tensor_is_used_only_when_the_criterion_needs_it():
    model = snp_core.create(VitAdapter.tiny[0], **VitAdapter.tiny[1])
    images = torch.randn(4, 3, 32, 32)
    plan = snp_core.compress(model, {"qk": 0.5}, images, model_kwargs=VitAdapter.tiny[1]).plan
    assert plan.calibration["source"] == "tensor" and plan.criterion["name"] == "snp"


def test_compress_passes_round_to_and_progress_on():
    model = snp_core.create(VitAdapter.tiny[0], **VitAdapter.tiny[1])
    seen: list[tuple[int, int]] = []
    plan = snp_core.compress(model, {"qk": 0.3, "v": 0.3, "ffn": 0.3}, torch.randn(4, 3, 32, 32), round_to=8,
                             model_kwargs=VitAdapter.tiny[1], progress=lambda done, total: seen.append((done, total))).plan
    assert plan.round_to == 8 and seen
    assert all(plan.widths[g] % 8 == 0 for g, r in plan.ratios.items() if r > 0)
