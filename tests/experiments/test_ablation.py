"""`experiments.ablation` (and `bench ablation`): the attention-fidelity metric and the study's pieces on a tiny budget."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch

import snp_core
from bench import ablation as command, cli
from experiments.ablation import data as digits, fidelity, report, study, tables, training


@pytest.fixture(scope="module")
def data():
    return digits.load_digits(32)


@pytest.fixture(scope="module")
def trained(data):
    config = training.TrainConfig(depth=2, embed_dim=64, epochs=1)
    model, info = training.train(config, data, cache=None, progress=lambda _: None)
    return config, model, info


def test_digits_split_is_fixed_and_stratified(data):
    assert data.x_train.shape == (1257, 3, 32, 32) and data.x_test.shape == (540, 3, 32, 32)
    assert torch.bincount(data.y_test).min() >= 50
    again = digits.load_digits(32)
    assert torch.equal(again.y_test, data.y_test)
    calib = digits.calibration_images(data, 64)
    assert calib.shape == (64, 3, 32, 32) and torch.equal(calib, digits.calibration_images(data, 64))


def test_fidelity_is_one_unpruned_and_lower_pruned(data, trained):
    config, model, _ = trained
    x = data.x_test[:32]
    same = fidelity.attention_fidelity(model, model, x)
    assert same["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert same["kl"] == pytest.approx(0.0, abs=1e-5)
    assert len(same["per_block_cosine"]) == config.depth
    calib = digits.calibration_images(data, 16)
    pruned = study.prune(model, config, {"qk": 0.7}, snp_core.criterion_from_options("random", seed=0), calib)
    assert pruned.blocks[0].attn.qk_dim < model.blocks[0].attn.head_dim
    assert pruned.blocks[0].attn.v_dim == model.blocks[0].attn.head_dim  # only Q/K pairs pruned
    fid = fidelity.attention_fidelity(model, pruned, x)
    # a 1-epoch model attends almost uniformly, so the maps move little, but they do move
    assert fid["cosine"] < 1.0 - 1e-5 and fid["kl"] > 1e-6


def test_attention_maps_match_timm(data, trained):
    """The q/k from the adapter's qk_sources give exactly the attention timm's module computes,
    and a rebuilt (unpruned) PrunedAttention gives the same maps through project()."""
    _, model, _ = trained
    x = data.x_test[:4]
    maps = fidelity.attention_maps(model, x)
    assert len(maps) == len(model.blocks)
    assert maps[0].shape == (4, model.blocks[0].attn.num_heads, 65, 65)
    assert torch.allclose(maps[0].sum(-1), torch.ones(1), atol=1e-5)
    # timm's own probabilities: its non-fused path passes them through attn_drop
    reference, timm_maps = copy.deepcopy(model), []
    for blk in reference.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda module, args, out: timm_maps.append(out))
    with torch.inference_mode():
        reference(x)
    assert len(timm_maps) == len(maps)
    for ours, theirs in zip(maps, timm_maps):
        assert torch.allclose(ours, theirs, atol=1e-6)
    groups = snp_core.adapter_for(model, training.MODEL_NAME).groups()
    plan = snp_core.make_plan(model, training.MODEL_NAME, snp_core.ratios.uniform(groups, qk=0.0),
                              snp_core.get_criterion("l2"))
    rebuilt = snp_core.prune(model, plan)
    assert type(rebuilt.blocks[0].attn).__name__ == "PrunedAttention"
    for a, b in zip(maps, fidelity.attention_maps(rebuilt, x)):
        assert torch.allclose(a, b, atol=1e-5)


def test_tiny_experiment_pieces(data, trained, tmp_path):
    config, model, info = trained
    assert 0.0 <= info["test_accuracy"] <= 1.0 and info["steps"] == 1257 // 64
    settings = study.Settings(train=config, ratios=(0.5,), finetune_steps=2, random_seeds=(0,), num_calib=16,
                              variant_gammas=(), head_ratios=(0.5,), cache=tmp_path)
    calib = digits.calibration_images(data, 16)
    data = digits.Digits(data.x_train, data.y_train, data.x_test[:64], data.y_test[:64])  # fast evaluation
    rows = []
    for name in ("snp", "l2"):
        pruned = study.prune(model, config, study.neurons(0.5), snp_core.criterion_from_options(name), calib)
        qk_only = study.prune(model, config, {"qk": 0.5}, snp_core.criterion_from_options(name), calib)
        rows.append({"ratio": 0.5, "criterion": name, "params": {}, "seed": 0,
                     **study.evaluate(model, pruned, data, settings, qk_only=qk_only)})
    for row in rows:
        assert {"acc_pruned", "acc_finetuned", "cosine", "kl", "cosine_qk", "kl_qk"} <= set(row)
        assert 0.0 < row["cosine"] < 1.0 and 0.0 < row["cosine_qk"] < 1.0
    summary = tables.summarise(rows)
    table = tables.results_table(summary)
    assert "| 50% | snp |" in table and "| 50% | l2 |" in table
    kinds = study.per_kind(model, data, calib, settings)
    assert {(r["kind"], r["criterion"]) for r in kinds} == {(k, c) for k in ("qk", "v", "ffn")
                                                            for c in study.CRITERIA}
    heads = study.compare_heads(model, data, calib, settings)
    assert {r["head_criterion"] for r in heads} == {"proj_l1", "qk_sum", "random"}
    assert all(r["heads_kept"] == 2 and r["output_kl"] > 0 and "acc_finetuned" in r for r in heads)
    result = {"settings": settings.to_dict(), "train": info,
              "unpruned": {"acc": info["test_accuracy"], "cosine": 1.0, "kl": 0.0}, "rows": rows,
              "variants": [], "best_variant": None, "per_kind": kinds, "heads": heads, "seconds": 1.0}
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("old generated text\n\n## Discussion\n\nhand-written words\n")
    paths = report.write_outputs(result, out, "python -m bench ablation --test")
    assert [p.name for p in paths] == ["README.md", "results.json", "accuracy_vs_ratio.png", "accuracy_vs_ratio.pdf"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    text = (out / "README.md").read_text()
    assert "python -m bench ablation --test" in text and "| 50% | snp |" in text and "PLACEHOLDER" not in text
    assert "| ffn |" in text and "| 50% (2 kept) | proj_l1 |" in text and "of heads removed, output KL" in text
    assert text.endswith("## Discussion\n\nhand-written words\n") and "old generated text" not in text


def test_criterion_runs_add_the_best_variant_only_when_it_differs():
    settings = study.Settings(random_seeds=(0, 1))
    labels = [label for label, _, _ in study.criterion_runs(settings, None)]
    assert labels == ["snp", "l2", "reverse", "random", "random"]
    assert [label for label, _, _ in study.criterion_runs(settings, study.snp_defaults())] == labels
    best = {**study.snp_defaults(), "gamma": 4}
    label, params, seed = study.criterion_runs(settings, best)[-1]
    assert (label, params["gamma"], seed) == ("snp*", 4, 0)
    assert snp_core.criterion_from_options("snp", seed=seed, **params).gamma == 4


def test_training_is_cached(data, tmp_path):
    config = training.TrainConfig(depth=1, embed_dim=32, epochs=1)
    model, info = training.train(config, data, cache=tmp_path, progress=lambda _: None)
    assert (tmp_path / config.key() / "model.safetensors").is_file()
    again, info2 = training.train(config, data, cache=tmp_path, progress=lambda _: None)
    assert info2.get("from_cache") and info2["test_accuracy"] == info["test_accuracy"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert training.TrainConfig(epochs=2).key() != training.TrainConfig(epochs=3).key()


def test_cli_registered_and_fills_the_settings():
    parser = cli.build_parser()
    args = parser.parse_args(["ablation", "--quick", "--out", "x"])
    assert args.func is command.run and args.quick
    assert isinstance(args, argparse.Namespace)
    assert command.settings_from_args(args) == study.Settings.quick(args.cache)
    args = parser.parse_args(["ablation", "--ratios", "0.2,0.4", "--epochs", "3", "--seeds", "2", "--embed", "0.1"])
    settings = command.settings_from_args(args)
    assert settings.ratios == (0.2, 0.4) and settings.train.epochs == 3 and settings.train.depth == 6
    assert settings.random_seeds == (0, 1) and settings.embed == 0.1
    assert command.command_line(args) == "python -m bench ablation --ratios 0.2,0.4 --epochs 3 --seeds 2 --embed 0.1"
