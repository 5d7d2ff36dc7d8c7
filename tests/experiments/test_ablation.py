"""`bench ablation`: the attention-fidelity metric and the experiment's pieces on a tiny budget."""

from __future__ import annotations

import argparse

import pytest
import torch

from bench import ablation, cli


@pytest.fixture(scope="module")
def data():
    return ablation.load_digits(32)


@pytest.fixture(scope="module")
def trained(data):
    config = ablation.TrainConfig(depth=2, embed_dim=64, epochs=1)
    model, info = ablation.train(config, data, cache=None, log_fn=lambda _: None)
    return config, model, info


def test_digits_split_is_fixed_and_stratified(data):
    assert data.x_train.shape == (1257, 3, 32, 32) and data.x_test.shape == (540, 3, 32, 32)
    assert torch.bincount(data.y_test).min() >= 50
    again = ablation.load_digits(32)
    assert torch.equal(again.y_test, data.y_test)
    calib = ablation.calibration_images(data, 64)
    assert calib.shape == (64, 3, 32, 32) and torch.equal(calib, ablation.calibration_images(data, 64))


def test_fidelity_is_one_unpruned_and_lower_pruned(data, trained):
    config, model, _ = trained
    x = data.x_test[:32]
    same = ablation.attention_fidelity(model, model, x)
    assert same["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert same["kl"] == pytest.approx(0.0, abs=1e-5)
    assert len(same["per_block_cosine"]) == config.depth
    calib = ablation.calibration_images(data, 16)
    pruned = ablation.prune(model, config, 0.7, ablation.criterion_for("random", seed=0), calib, qk_only=True)
    assert pruned.blocks[0].attn.qk_dim < model.blocks[0].attn.head_dim
    fid = ablation.attention_fidelity(model, pruned, x)
    # a 1-epoch model attends almost uniformly, so the maps move little, but they do move
    assert fid["cosine"] < 1.0 - 1e-5 and fid["kl"] > 1e-6


def test_attention_maps_match_timm(data, trained):
    """The hooked q/k give exactly the attention the timm module computes."""
    _, model, _ = trained
    x = data.x_test[:4]
    maps = ablation.attention_maps(model, x)
    assert len(maps) == len(model.blocks)
    assert maps[0].shape == (4, model.blocks[0].attn.num_heads, 65, 65)
    assert torch.allclose(maps[0].sum(-1), torch.ones(1), atol=1e-5)
    # an unpruned PrunedAttention (same weights) gives the same maps through project()
    from snp_core import ratios as ratio_sources
    import snp_core
    groups = snp_core.adapter_for(model, ablation.MODEL_NAME).groups()
    plan = snp_core.make_plan(model, ablation.MODEL_NAME, ratio_sources.uniform(groups, qk=0.0),
                              snp_core.get_criterion("l2"), progress=False)
    rebuilt = snp_core.prune(model, plan)
    assert type(rebuilt.blocks[0].attn).__name__ == "PrunedAttention"
    for a, b in zip(maps, ablation.attention_maps(rebuilt, x)):
        assert torch.allclose(a, b, atol=1e-5)


def test_tiny_experiment_pieces(data, trained, tmp_path):
    config, model, info = trained
    assert 0.0 <= info["test_accuracy"] <= 1.0 and info["steps"] == 1257 // 64
    settings = ablation.Settings(train=config, ratios=(0.5,), finetune_steps=2, random_seeds=(0,), num_calib=16,
                                 variant_gammas=(), head_ratios=(0.5,), cache=tmp_path)
    calib = ablation.calibration_images(data, 16)
    data = ablation.Digits(data.x_train, data.y_train, data.x_test[:64], data.y_test[:64])  # fast evaluation
    rows = []
    for name in ("snp", "l2"):
        criterion = ablation.criterion_for(name)
        pruned = ablation.prune(model, config, 0.5, criterion, calib)
        qk_only = ablation.prune(model, config, 0.5, ablation.criterion_for(name), calib, qk_only=True)
        rows.append({"ratio": 0.5, "criterion": name, "params": {}, "seed": 0,
                     **ablation.evaluate(model, pruned, data, settings, qk_only=qk_only)})
    for row in rows:
        assert {"acc_pruned", "acc_finetuned", "cosine", "kl", "cosine_qk", "kl_qk"} <= set(row)
        assert 0.0 < row["cosine"] < 1.0 and 0.0 < row["cosine_qk"] < 1.0
    summary = ablation.summarise(rows)
    table = ablation.markdown_table(summary)
    assert "| 50% | snp |" in table and "| 50% | l2 |" in table
    kinds = ablation.per_kind(model, data, calib, settings)
    assert {(r["kind"], r["criterion"]) for r in kinds} == {(k, c) for k in ("qk", "v", "ffn")
                                                            for c in ablation.CRITERIA}
    heads = ablation.compare_heads(model, data, calib, settings)
    assert {r["head_criterion"] for r in heads} == {"proj_l1", "qk_sum", "random"}
    assert all(r["heads_kept"] == 2 and r["output_kl"] > 0 and "acc_finetuned" in r for r in heads)
    result = {"settings": ablation._jsonable(ablation.asdict(settings)), "train": info,
              "unpruned": {"acc": info["test_accuracy"], "cosine": 1.0, "kl": 0.0}, "rows": rows,
              "variants": [], "best_variant": None, "per_kind": kinds, "heads": heads, "seconds": 1.0}
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("old generated text\n\n## Discussion\n\nhand-written words\n")
    paths = ablation.write_outputs(result, out, "python -m bench ablation --test")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    text = (out / "README.md").read_text()
    assert "python -m bench ablation --test" in text and "| 50% | snp |" in text and "PLACEHOLDER" not in text
    assert "| ffn |" in text and "| 50% (2 kept) | proj_l1 |" in text and "of heads removed, output KL" in text
    assert text.endswith("## Discussion\n\nhand-written words\n") and "old generated text" not in text


def test_training_is_cached(data, tmp_path):
    config = ablation.TrainConfig(depth=1, embed_dim=32, epochs=1)
    model, info = ablation.train(config, data, cache=tmp_path, log_fn=lambda _: None)
    assert (tmp_path / config.key() / "model.safetensors").is_file()
    again, info2 = ablation.train(config, data, cache=tmp_path, log_fn=lambda _: None)
    assert info2.get("from_cache") and info2["test_accuracy"] == info["test_accuracy"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert ablation.TrainConfig(epochs=2).key() != ablation.TrainConfig(epochs=3).key()


def test_cli_registered():
    parser = cli.build_parser()
    args = parser.parse_args(["ablation", "--quick", "--out", "x"])
    assert args.func is ablation.run and args.quick
    assert isinstance(args, argparse.Namespace)
