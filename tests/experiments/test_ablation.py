"""`experiments.ablation` and `bench ablation`: data, metric, statistics, patterns, report, `--quick` end to end."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch

import snp_core
from bench import ablation as command, cli
from bench.options import UsageError
from experiments.ablation import data as datasets, fidelity, report, stats, study, training


@pytest.fixture(scope="module")
def data():
    return datasets.load_digits(32)


@pytest.fixture(scope="module")
def trained(data):
    config = training.TrainConfig(depth=2, embed_dim=64, epochs=1, patch_size=8)  # 17 tokens: quick
    model, info = training.train(config, data, cache=None, progress=lambda _: None)
    return config, model, info


def test_splits_are_fixed_and_stratified(data):
    assert data.x_train.shape == (1257, 3, 32, 32) and data.x_test.shape == (540, 3, 32, 32)
    assert torch.bincount(data.y_test).min() >= 50
    assert torch.equal(datasets.load_digits(32).y_test, data.y_test)
    calib = datasets.calibration_images(data, 64)
    assert calib.shape == (64, 3, 32, 32) and torch.equal(calib, datasets.calibration_images(data, 64))
    assert not torch.equal(calib, datasets.calibration_images(data, 64, seed=1))
    mnist = datasets.load("mnist", 28)
    assert mnist.x_train.shape == (4000, 3, 28, 28) and mnist.x_test.shape == (1000, 3, 28, 28)
    assert torch.bincount(mnist.y_test).tolist() == [100] * 10
    assert mnist.x_train.min() == -1.0 and mnist.x_train.max() == 1.0
    with pytest.raises(ValueError, match="unknown ablation data set 'cifar'; known: digits, mnist"):
        datasets.load("cifar", 32)


def test_fidelity_is_one_unpruned_and_lower_pruned(data, trained):
    config, model, _ = trained
    x = data.x_test[:32]
    same = fidelity.attention_fidelity(model, model, x)
    assert same["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert same["kl"] == pytest.approx(0.0, abs=1e-5)
    assert len(same["per_block_cosine"]) == config.depth
    calib = datasets.calibration_images(data, 16)
    s = study.Subject(config, model, data, calib, x, fidelity.attention_maps(model, x), {})
    pruned = study.prune(s, study.kind_ratios(s, qk=0.7), "random")
    assert pruned.blocks[0].attn.qk_dim < model.blocks[0].attn.head_dim
    assert pruned.blocks[0].attn.v_dim == model.blocks[0].attn.head_dim  # only Q/K pairs pruned
    fid = fidelity.fidelity_to(s.reference, pruned, x, batch_size=10)  # batches that split the reference
    # a 1-epoch model attends almost uniformly, so the maps move little, but they do move
    assert fid["cosine"] < 1.0 - 1e-5 and fid["kl"] > 1e-6
    assert fid["cosine"] == pytest.approx(fidelity.attention_fidelity(model, pruned, x)["cosine"], abs=1e-6)


def test_attention_maps_match_timm(data, trained):
    """The q/k from the adapter's qk_sources give exactly the attention timm's module computes,
    and a rebuilt (unpruned) PrunedAttention gives the same maps through project()."""
    _, model, _ = trained
    x = data.x_test[:4]
    maps = fidelity.attention_maps(model, x)
    assert len(maps) == len(model.blocks)
    assert maps[0].shape == (4, model.blocks[0].attn.num_heads, 17, 17)
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


def test_intervals_and_paired_calls():
    one = stats.interval([0.5])
    assert one.mean == 0.5 and one.lo is None and one.sign() == 0 and one.text(100.0) == "50.0"
    three = stats.interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2) · sd / √n, sd = 1
    assert three.mean == 2.0 and three.lo == pytest.approx(2 - half, abs=1e-5) and three.hi == pytest.approx(2 + half)
    assert three.text(1.0, 2) == f"2.00 [{2 - half:.2f}, {2 + half:.2f}]"
    # a consistent small gain is called, a larger but inconsistent one is not: pairing is what decides
    assert stats.paired({0: 0.91, 1: 0.81, 2: 0.71}, {0: 0.90, 1: 0.80, 2: 0.70}).sign() == 1
    assert stats.paired({0: 0.99, 1: 0.70, 2: 0.81}, {0: 0.90, 1: 0.80, 2: 0.70}).sign() == 0
    assert stats.paired({0: 0.5, 1: 0.4, 2: 0.3}, {0: 0.6, 1: 0.52, 2: 0.41}).sign() == -1
    assert stats.paired({0: 0.5, 1: 0.4}, {0: 0.6, 1: 0.55}).sign() == 0  # two seeds: t(0.975, 1) = 12.7
    assert stats.paired({0: 1.0}, {1: 1.0}) is None


def test_uniform_and_mixed_patterns(data, trained):
    config, model, _ = trained
    s = study.Subject(config, model, data, data.x_train[:4], data.x_test[:4], [], {})
    groups = s.groups()
    uniform = study.ratios_for(s, "uniform", 0.5)
    assert {uniform[g.name] for g in groups if g.kind in ("qk", "v", "ffn")} == {0.5}
    assert 0.15 < uniform["embed"] < 0.35  # the paper's residual share of its neuron ratio (≈ 0.45)
    mixed = study.ratios_for(s, "mixed", 0.3)
    neurons = [mixed[g.name] for g in groups if g.kind in ("qk", "v", "ffn")]
    assert sum(neurons) / len(neurons) == pytest.approx(0.3) and len(set(neurons)) > 1
    assert mixed["embed"] == pytest.approx(study.ratios_for(s, "uniform", 0.3)["embed"])
    assert mixed["blocks.1.qk"] > mixed["blocks.0.qk"]  # the paper prunes late blocks' Q/K harder
    assert max(study.ratios_for(s, "mixed", 0.9).values()) == study.MAX_RATIO
    assert study.ratios_for(s, "uniform", 0.5, embed=0.1)["embed"] == 0.1
    # on the paper's own depth the mapping is the identity
    deit = snp_core.create(training.MODEL_NAME, "random", img_size=32, patch_size=4, embed_dim=48, num_classes=10)
    paper = snp_core.ratios.resolve("paper", training.MODEL_NAME)
    assert study.paper_pattern(snp_core.adapter_for(deit).groups(), 12) == paper
    with pytest.raises(ValueError, match="unknown ratio pattern 'zigzag'"):
        study.ratios_for(s, "zigzag", 0.5)


def _rows(gain: float) -> list[dict]:
    """Synthetic full-model rows: snp_inverted beats l2 and snp by `gain` on both measures, every seed."""
    rows = []
    for bench in ("digits", "mnist"):
        for pattern in ("uniform", "mixed"):
            for seed in range(3):
                for name, base in (("snp", 0.5), ("l2", 0.6), ("snp_inverted", 0.6 + gain)):
                    value = base + 0.01 * seed
                    rows.append({"benchmark": bench, "seed": seed, "pattern": pattern, "ratio": 0.5,
                                 "criterion": name, "acc_pruned": value, "cosine": value, "embed": 0.2})
    return rows


def test_better_criterion_needs_every_setting():
    result = {"rows": _rows(0.05), "criteria": ["snp", "l2", "snp_inverted"]}
    name, text = report.better_criterion(result)
    assert name == "snp_inverted" and "`snp_inverted` is the better criterion" in text
    rows = _rows(0.05)
    next(r for r in rows if r["criterion"] == "snp_inverted" and r["benchmark"] == "mnist")["cosine"] = 0.0
    name, text = report.better_criterion({"rows": rows, "criteria": ["snp", "l2", "snp_inverted"]})
    assert name is None and "No criterion qualifies" in text and "mnist uniform 50% attention cosine vs l2" in text
    name, text = report.better_criterion({"rows": [r for r in rows if r["benchmark"] == "digits"],
                                          "criteria": ["snp", "l2", "snp_inverted"]})
    assert name is None and "needs both benchmarks" in text


def test_tiny_study_writes_every_output_and_keeps_the_discussion(trained, tmp_path):
    config, _, _ = trained
    settings = study.Settings(benchmarks=(config,), seeds=(0, 1), criteria=("snp", "l2", "no_such"),
                              ratios=(0.5,), num_calib=8, num_fidelity=16, variant_gammas=(4,), head_ratios=(0.5,),
                              finetune_steps=(1, 2), map_ratios=(0.0, 0.5), map_images=1, cache=tmp_path / "cache")
    lines: list[str] = []
    result = study.run_experiment(settings, lines.append)
    assert result["criteria"] == ["snp", "l2"] and lines[0] == "criteria not in snp_core (skipped): no_such"
    assert {(r["pattern"], r["criterion"], r["seed"]) for r in result["rows"]} == {
        (p, c, s) for p in ("uniform", "mixed", "qk_only") for c in ("snp", "l2") for s in (0, 1)}
    assert all(r["embed"] > 0 for r in result["rows"] if r["pattern"] != "qk_only")
    assert {r["kind"] for r in result["per_kind"]} == {"qk", "v", "ffn", "embed"}
    assert sorted({r["steps"] for r in result["finetune"]}) == [0, 1, 2]
    assert {r["head_criterion"] for r in result["heads"]} == {"proj_l1", "qk_sum", "random"}
    grid = result["attention_maps"]["digits"]
    assert grid["maps"]["snp"][0.5].shape == (1, 17, 17) and torch.equal(grid["maps"]["l2"][0.0],
                                                                          grid["maps"]["snp"][0.0])
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("old generated text\n\n## Discussion\n\nhand-written words\n")
    paths = report.write_outputs(result, out, "python -m bench ablation --test")
    assert {p.name for p in paths} == {"README.md", "README_SECTION.md", "results.json", "accuracy_vs_ratio.png",
                                       "accuracy_vs_ratio.pdf", "finetune_curves.png", "finetune_curves.pdf",
                                       "attention_maps_digits.png"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert "attention_maps" not in json.loads((out / "results.json").read_text())
    text = (out / "README.md").read_text()
    assert "python -m bench ablation --test" in text and "### digits, mixed" in text and "Δ vs l2" in text
    assert "| 50% | snp |" in text and "| embed | snp |" in text and "needs both benchmarks" in text
    assert "![attention maps, digits](attention_maps_digits.png)" in text and "digits, 2 fine-tune steps" in text
    assert text.endswith("## Discussion\n\nhand-written words\n") and "old generated text" not in text
    section = (out / "README_SECTION.md").read_text()
    assert section.startswith("## Does the criterion work?") and f"({out.as_posix()}/README.md)" in section

    # a rerun with the same settings measures nothing again: each finished subject comes from the cache, maps too
    lines.clear()
    again = study.run_experiment(settings, lines.append)
    assert sum("measured before" in line for line in lines) == 2 and not any("fine-tune" in line for line in lines)
    assert result["cached_subjects"] == 0 and again["cached_subjects"] == 2
    volatile = ("seconds", "attention_maps", "cached_subjects")
    assert {k: v for k, v in again.items() if k not in volatile} == {
        k: v for k, v in result.items() if k not in volatile}
    cached = again["attention_maps"]["digits"]
    assert cached["tokens"] == grid["tokens"] and torch.equal(cached["images"], grid["images"])
    assert list(cached["maps"]) == list(grid["maps"]) and all(list(cached["maps"][n]) == list(grid["maps"][n])
                                                              for n in grid["maps"])  # the same order
    assert all(torch.equal(cached["maps"][n][q], grid["maps"][n][q]) for n in grid["maps"] for q in grid["maps"][n])
    # ... and a changed setting measures again
    lines.clear()
    study.run_experiment(dataclasses.replace(settings, seeds=(0,), criteria=("l2",), finetune_steps=(1,)),
                         lines.append)
    assert not any("measured before" in line for line in lines)


def test_training_is_cached_and_seeded(data, tmp_path):
    config = training.TrainConfig(depth=1, embed_dim=32, epochs=1)
    model, info = training.train(config, data, cache=tmp_path, progress=lambda _: None)
    assert (tmp_path / config.key() / "model.safetensors").is_file()
    again, info2 = training.train(config, data, cache=tmp_path, progress=lambda _: None)
    assert info2.get("from_cache") and info2["test_accuracy"] == info["test_accuracy"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    other, _ = training.train(dataclasses.replace(config, seed=1), data, cache=None, progress=lambda _: None)
    assert not torch.equal(other.head.weight, model.head.weight)
    assert training.TrainConfig(epochs=2).key() != training.TrainConfig(epochs=3).key()
    assert training.benchmark("mnist", 2).key() != training.benchmark("mnist", 1).key()
    with pytest.raises(ValueError, match="unknown ablation benchmark 'cifar'"):
        training.benchmark("cifar")


def test_cli_fills_the_settings_and_refuses_unknown_names(tmp_path):
    parser = cli.build_parser()
    args = parser.parse_args(["ablation", "--quick", "--out", "x", "--root", str(tmp_path), "--quiet"])
    assert args.func is command.run and args.quick
    assert command.settings_from_args(args) == study.Settings.quick(tmp_path / "ablation")  # under the outputs root
    args = parser.parse_args(["ablation", "--root", str(tmp_path), "--cache", str(tmp_path / "elsewhere"), "--quiet"])
    assert command.settings_from_args(args).cache == tmp_path / "elsewhere"  # --cache wins
    args = parser.parse_args(["ablation", "--ratios", "0.2,0.4", "--epochs", "3", "--seeds", "2", "--embed", "0.1",
                              "--benchmarks", "mnist", "--criteria", "snp,l2", "--finetune-steps", "20,5"])
    settings = command.settings_from_args(args)
    assert settings.ratios == (0.2, 0.4) and [b.data for b in settings.benchmarks] == ["mnist"]
    assert settings.benchmarks[0].epochs == 3 and settings.benchmarks[0].depth == training.BENCHMARKS["mnist"].depth
    assert settings.seeds == (0, 1) and settings.embed == 0.1 and settings.criteria == ("snp", "l2")
    assert settings.finetune_steps == (5, 20)
    assert command.command_line(args) == ("python -m bench ablation --benchmarks mnist --criteria snp,l2 --ratios "
                                          "0.2,0.4 --finetune-steps 20,5 --epochs 3 --seeds 2 --embed 0.1")
    for flag, value, message in (("--benchmarks", "digits,cifar", "--benchmarks: unknown benchmark 'cifar'"),
                                 ("--criteria", "snp,nope", "--criteria: unknown criterion 'nope'")):
        with pytest.raises(UsageError, match=message):
            command.settings_from_args(parser.parse_args(["ablation", flag, value]))


@pytest.mark.timeout(1800)  # a hang guard only: on a shared, loaded 2-core machine this runs several times slower
def test_quick_command_end_to_end(tmp_path, capsys):
    """What `bench ablation --quick` writes (the suite runs it; a few minutes on 2 quiet cores)."""
    out = tmp_path / "quick"
    code = cli.main(["ablation", "--quick", "--out", str(out), "--cache", str(tmp_path / "cache"), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| criterion | digits: acc. pruned (%) | digits: attention cosine |" in printed
    result = json.loads((out / "results.json").read_text())
    assert [t["benchmark"] for t in result["train"]] == ["digits"] and result["train"][0]["test_accuracy"] > 0.5
    assert set(result["criteria"]) == set(study.available(study.CRITERIA))
    # a trained model's attention maps do move when half the Q/K pairs go, and inverting SNP's Q/K ranking
    # (reverse) keeps them worse than SNP's own
    qk = {r["criterion"]: r["cosine"] for r in result["rows"] if r["pattern"] == "qk_only"}
    assert all(c < 0.999 for c in qk.values()) and qk["reverse"] < qk["snp"]
    assert (out / "attention_maps_digits.png").is_file() and (out / "finetune_curves.png").is_file()
