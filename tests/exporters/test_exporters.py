"""exporters: real torch / onnx / onnxruntime exports of DeiT-T and its SNP-pruned version, no mocks.

The four DeiT-T artifacts (original / pruned x onnx / torchscript) are exported
once per module and shared; everything that only needs *an* export (cache
behaviour, formats, errors) uses a 2-block 32x32 timm ViT to stay fast.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import exporters
import snp_core
from exporters import ExportError
from helpers import randomize_norms, tiny_vit

# torch 2.14 marks torch.jit.save/load deprecated (FutureWarning); they still work and are what devices run.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

NAME = "deit_tiny_patch16_224"
TINY_SHAPE = (1, 3, 32, 32)
MANIFEST_FIELDS = {
    "schema", "format", "artifact_format", "file", "sha256", "size_bytes", "input_shape", "input_dtype",
    "dynamic_batch", "opset", "exporter", "versions", "params", "macs", "plan_macs", "parity", "source", "variant",
    "plan_id", "options", "cache_key", "engine_built_on_device", "op_histogram", "graph_check", "created",
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def deit() -> dict:
    """Original DeiT-T (random weights, non-trivial norms) and its SNP-pruned version (paper ratios, l2)."""
    torch.manual_seed(0)
    original = snp_core.create(NAME, "random")
    # Random LayerNorm/bias values: with timm's init (all ones / zeros) the ONNX optimiser stores identical
    # tensors once, which would blur the "graph carries exactly the module's weights" count below.
    randomize_norms(original)
    plan = snp_core.make_plan(original, NAME, snp_core.ratios.resolve("paper", NAME), snp_core.get_criterion("l2"))
    pruned = snp_core.prune(original, plan)
    return {"original": original, "pruned": pruned, "plan": plan}


@pytest.fixture(scope="module")
def exported(deit: dict, cache_dir: Path) -> dict[tuple[str, str], exporters.Artifact]:
    """(variant, format) -> Artifact; the pruned ONNX has a dynamic batch axis."""
    arts = {}
    for fmt in ("onnx", "torchscript"):
        arts[("original", fmt)] = exporters.export(deit["original"], fmt, cache_dir, source=NAME, variant="original")
        arts[("pruned", fmt)] = exporters.export(deit["pruned"], fmt, cache_dir, source=NAME,
                                                 variant="snp:deit_tiny", plan=deit["plan"],
                                                 dynamic_batch=fmt == "onnx")
    return arts


@pytest.fixture
def tiny() -> nn.Module:
    model = tiny_vit()
    randomize_norms(model)
    return model


ALL = [("original", "onnx"), ("pruned", "onnx"), ("original", "torchscript"), ("pruned", "torchscript")]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def eager(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(x).numpy()


# -- the DeiT-T artifacts -------------------------------------------------------


@pytest.mark.parametrize("variant,fmt", ALL)
def test_parity_is_recorded_and_small(exported: dict, variant: str, fmt: str) -> None:
    art = exported[(variant, fmt)]
    parity = art.manifest["parity"]
    assert 0.0 <= parity["max_abs_diff"] < 1e-3
    assert parity["tolerance"] == 1e-3
    assert ("onnxruntime" if fmt == "onnx" else "torch.jit.load") in parity["runtime"]
    assert parity["batch_sizes"] == ([1, 3] if (variant, fmt) == ("pruned", "onnx") else [1])
    assert not art.cached


@pytest.mark.parametrize("variant,fmt", ALL)
def test_manifest_describes_the_file(exported: dict, deit: dict, variant: str, fmt: str, tmp_path: Path) -> None:
    art, model = exported[(variant, fmt)], deit[variant]
    m = art.manifest
    assert MANIFEST_FIELDS <= set(m)
    assert json.loads(art.manifest_path.read_text()) == m
    assert art.manifest_path == art.path.parent / "manifest.json"
    assert art.path.name == m["file"] == f"model.{'onnx' if fmt == 'onnx' else 'pt'}"
    assert art.sha256 == m["sha256"] == sha256(art.path)
    assert m["size_bytes"] == art.path.stat().st_size
    assert (m["format"], art.format, m["input_shape"], m["input_dtype"]) == (fmt, fmt, [1, 3, 224, 224], "float32")
    assert m["opset"] == (17 if fmt == "onnx" else None)
    assert m["versions"]["torch"] == torch.__version__ and m["versions"]["onnx"] == onnx.__version__
    assert m["versions"]["onnxruntime"] == ort.__version__ and m["versions"]["timm"]
    assert m["params"] == snp_core.count_params(model)
    assert m["macs"] == snp_core.count_macs(model)
    assert m["source"] == NAME and m["engine_built_on_device"] is False
    assert art.path.parent.name == m["cache_key"][:16]
    datetime.fromisoformat(m["created"])
    if variant == "original":
        assert (m["variant"], m["plan_id"], m["plan_macs"]) == ("original", None, None)
        assert m["params"] == 5_717_416
    else:
        # The plan id is the plan's fingerprint, the same whether given as a Plan or as the saved plan.json.
        snp_core.save(tmp_path, model, deit["plan"])
        assert m["variant"] == "snp:deit_tiny" and m["plan_id"] == deit["plan"].fingerprint()
        assert exporters.export(model, fmt, art.path.parent.parent, source=NAME, variant="snp:deit_tiny",
                                plan=tmp_path / "plan.json", dynamic_batch=fmt == "onnx").path == art.path
        # Module MACs equal the plan's MACs for its kept widths: the module is physically that small.
        assert m["macs"] == m["plan_macs"] == deit["plan"].macs["pruned"] == 638_230_983
    if fmt == "onnx":
        assert m["op_histogram"] and m["graph_check"]["clean"] is True
    else:
        assert m["op_histogram"] is None and m["graph_check"] is None


@pytest.mark.parametrize("variant", ["original", "pruned"])
def test_onnx_is_one_checked_file_with_its_histogram(exported: dict, variant: str) -> None:
    art = exported[(variant, "onnx")]
    assert sorted(os.listdir(art.path.parent)) == ["manifest.json", "model.onnx"]
    proto = onnx.load(str(art.path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")] == [17]
    counted: dict[str, int] = {}
    for node in proto.graph.node:
        counted[node.op_type] = counted.get(node.op_type, 0) + 1
    assert art.manifest["op_histogram"] == counted
    assert art.manifest["nodes"] == len(proto.graph.node)
    assert art.manifest["onnx_exporter"] == "dynamo" and art.manifest["exporter_fallback_reason"] is None


def test_pruned_onnx_graph_has_no_run_time_selection_padding_or_masks(exported: dict, deit: dict) -> None:
    """What "no extra work in the pruned graph" means, checked on the file itself.

    * No op that pads, masks or moves elements by computed indices: no Pad, no
      Where (masks; the dynamo graph has none at all, not even shape arithmetic),
      no Scatter*/NonZero/Compress, no GatherElements/GatherND.
    * Exactly one Gather, and it reads an *activation*: timm's class-token readout
      ``x[:, 0]`` after the final LayerNorm (data = LayerNormalization output,
      index = the scalar constant 0). A Gather whose data were an initializer would
      be an index_select of kept neurons from full-size weights at run time.
    * The float weights in the file add up to exactly the pruned module's
      parameter count, and none has a dimension of the original widths (embed 192,
      qkv 576, MLP 768, head dim 64): no full-size or padded copy is carried.
    """
    art = exported[("pruned", "onnx")]
    proto = onnx.load(str(art.path))
    hist = art.manifest["op_histogram"]
    for op in ("Pad", "Where", "ScatterND", "ScatterElements", "NonZero", "Compress", "GatherElements", "GatherND"):
        assert op not in hist, op
    assert hist["Gather"] == 1
    producers = {out: node for node in proto.graph.node for out in node.output}
    inits = {t.name: t for t in proto.graph.initializer}
    (gather,) = [n for n in proto.graph.node if n.op_type == "Gather"]
    data, index = gather.input
    assert data not in inits and producers[data].op_type == "LayerNormalization"
    assert onnx.numpy_helper.to_array(inits[index]).tolist() == 0
    floats = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 1]
    assert sum(int(np.prod(t.dims)) for t in floats) == snp_core.count_params(deit["pruned"]) == 3_013_109
    assert not {192, 576, 768, 64} & {d for t in floats for d in t.dims}
    check = art.manifest["graph_check"]
    assert check == {"weight_gathers": [], "index_ops": {}, "pads": 0, "masks": [], "clean": True,
                     "float_weight_elements": 3_013_109, "params": 3_013_109}
    # The pruned attention's q/k/v come from one fused projection split three ways, in all 12 blocks.
    assert hist["Split"] == 12 and hist["Softmax"] == 12


def test_external_data_is_folded_into_one_file(exported: dict, tmp_path: Path) -> None:
    """What happens when an exporter writes weights to a side file (as dynamo does by default)."""
    from exporters.onnx_export import _one_file

    art = exported[("pruned", "onnx")]
    path = tmp_path / "model.onnx"
    onnx.save_model(onnx.load(str(art.path)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.onnx.data"]
    assert _one_file(path, weight_bytes=art.manifest["size_bytes"]) == []
    assert os.listdir(tmp_path) == ["model.onnx"]
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    outputs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
               for p in (path, art.path)]
    assert np.array_equal(*outputs)


def test_dynamic_batch_onnx_runs_at_batch_1_and_3(exported: dict, deit: dict) -> None:
    art = exported[("pruned", "onnx")]
    session = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 224, 224]
    for batch in (1, 3):
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        (out,) = session.run(None, {inp.name: x.numpy()})
        assert out.shape == (batch, 1000)
        assert np.abs(out - eager(deit["pruned"], x)).max() < 1e-3
    assert art.manifest["dynamic_batch"] is True


@pytest.mark.parametrize("variant", ["original", "pruned"])
def test_torchscript_loads_with_torch_jit_and_matches_eager(exported: dict, deit: dict, variant: str) -> None:
    art = exported[(variant, "torchscript")]
    loaded = torch.jit.load(str(art.path))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        assert (loaded(x) - deit[variant](x)).abs().max().item() < 1e-3


def test_torchscript_needs_only_torch_on_the_device(exported: dict, deit: dict, tmp_path: Path) -> None:
    """A fresh interpreter, outside the repo, loads and runs the .pt without importing timm or snp_core."""
    art = exported[("pruned", "torchscript")]
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    torch.save({"x": x, "y": torch.from_numpy(eager(deit["pruned"], x))}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        io = torch.load({str(tmp_path / 'io.pt')!r})
        m = torch.jit.load({str(art.path)!r})
        with torch.inference_mode():
            diff = (m(io["x"]) - io["y"]).abs().max().item()
        assert diff < 1e-3, diff
        assert not {{"timm", "snp_core", "exporters"}} & set(sys.modules), sorted(sys.modules)
        print("ok", diff)
    """)
    proc = subprocess.run([sys.executable, "-I", "-W", "ignore", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")


# -- the cache ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_second_export_is_a_cache_hit_without_exporting(exported: dict, deit: dict, cache_dir: Path,
                                                         fmt: str) -> None:
    """The original model is not even run: a forward pre-hook counts every call (tracing calls it too)."""
    first = exported[("original", fmt)]
    mtime = first.path.stat().st_mtime_ns
    calls = []
    handle = deit["original"].register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        again = exporters.export(deit["original"], fmt, cache_dir, source=NAME, variant="original")
    finally:
        handle.remove()
    assert again.cached and calls == []
    assert (again.path, again.sha256, again.manifest) == (first.path, first.sha256, first.manifest)
    assert again.path.stat().st_mtime_ns == mtime


def test_forward_hook_counter_sees_an_export(tiny: nn.Module, tmp_path: Path) -> None:
    """Control for the test above: the same counter does see a real (uncached) export."""
    calls = []
    tiny.register_forward_pre_hook(lambda *_: calls.append(1))
    art = exporters.export(tiny, "torchscript", tmp_path, input_shape=TINY_SHAPE)
    assert not art.cached and calls


def test_different_weights_give_a_different_artifact(exported: dict, deit: dict, cache_dir: Path) -> None:
    first = exported[("original", "torchscript")]
    changed = copy.deepcopy(deit["original"])
    with torch.no_grad():
        changed.head.bias[0] += 1.0
    art = exporters.export(changed, "torchscript", cache_dir, source=NAME, variant="original")
    assert not art.cached
    assert art.path.parent != first.path.parent and art.sha256 != first.sha256
    assert first.path.is_file() and sha256(first.path) == first.sha256  # the first entry is untouched


def test_options_and_labels_are_part_of_the_key(tiny: nn.Module, tmp_path: Path) -> None:
    base = exporters.export(tiny, "torchscript", tmp_path, input_shape=TINY_SHAPE)
    batch2 = exporters.export(tiny, "torchscript", tmp_path, input_shape=(2, 3, 32, 32))
    renamed = exporters.export(tiny, "torchscript", tmp_path, input_shape=TINY_SHAPE, variant="other")
    assert len({base.path.parent, batch2.path.parent, renamed.path.parent}) == 3
    assert batch2.manifest["input_shape"] == [2, 3, 32, 32] and renamed.manifest["variant"] == "other"
    assert exporters.export(tiny, "torchscript", tmp_path, input_shape=TINY_SHAPE).cached


def test_half_written_or_corrupt_entries_are_never_taken_as_cached(tiny: nn.Module, tmp_path: Path) -> None:
    good = exporters.export(tiny, "torchscript", tmp_path, input_shape=TINY_SHAPE)
    folder, data = good.path.parent, good.path.read_bytes()

    good.path.write_bytes(data[: len(data) // 2])  # truncated artifact, manifest intact
    again = exporters.export(tiny, "torchscript", tmp_path, input_shape=TINY_SHAPE)
    # (TorchScript files are not byte-reproducible within one process -- class names get mangled with a counter --
    # so the re-export is checked against its own manifest, not against the first file's hash.)
    assert not again.cached and sha256(again.path) == again.sha256

    (folder / "manifest.json").unlink()  # artifact without manifest: what a crash mid-write would look like
    again = exporters.export(tiny, "torchscript", tmp_path, input_shape=TINY_SHAPE)
    assert not again.cached and again.manifest_path.is_file()

    (folder / "manifest.json").write_text('{"schema": "snp-export-manif')  # torn manifest
    assert not exporters.export(tiny, "torchscript", tmp_path, input_shape=TINY_SHAPE).cached
    assert exporters.export(tiny, "torchscript", tmp_path, input_shape=TINY_SHAPE).cached
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no staging or trash folders left


# -- formats, options, errors -----------------------------------------------------


def test_trt_is_the_onnx_with_the_engine_left_to_the_device(tiny: nn.Module, tmp_path: Path) -> None:
    art = exporters.export(tiny, "trt", tmp_path, input_shape=TINY_SHAPE)
    m = art.manifest
    assert art.path.name == "model.onnx" and (m["format"], m["artifact_format"]) == ("trt", "onnx")
    assert m["engine_built_on_device"] is True and m["opset"] == 17
    assert m["parity"]["max_abs_diff"] < 1e-3 and "onnxruntime" in m["parity"]["runtime"]
    assert sorted(os.listdir(art.path.parent)) == ["manifest.json", "model.onnx"]
    assert not exporters.export(tiny, "onnx", tmp_path, input_shape=TINY_SHAPE).manifest["engine_built_on_device"]


def test_pt2_with_dynamic_batch(tiny: nn.Module, tmp_path: Path) -> None:
    art = exporters.export(tiny, "pt2", tmp_path, input_shape=TINY_SHAPE, dynamic_batch=True)
    assert art.path.name == "model.pt2" and art.manifest["parity"]["max_abs_diff"] < 1e-3
    module = torch.export.load(str(art.path)).module()
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.inference_mode():
            assert (module(x) - tiny(x)).abs().max().item() < 1e-3


def test_opset_is_selectable_and_exactly_what_is_written(tiny: nn.Module, tmp_path: Path) -> None:
    art18 = exporters.export(tiny, "onnx", tmp_path, input_shape=TINY_SHAPE, opset=18)
    assert art18.manifest["opset"] == 18 and art18.manifest["onnx_exporter"] == "dynamo"
    # dynamo cannot convert LayerNormalization below 17: "auto" falls back to the TorchScript exporter, recorded.
    art14 = exporters.export(tiny, "onnx", tmp_path, input_shape=TINY_SHAPE, opset=14)
    assert (art14.manifest["opset"], art14.manifest["onnx_exporter"]) == (14, "torchscript")
    assert "wrote opset 18 instead of 14" in art14.manifest["exporter_fallback_reason"]
    for art, opset in ((art18, 18), (art14, 14)):
        proto = onnx.load(str(art.path))
        assert [i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")] == [opset]
    with pytest.raises(ExportError, match=r"^onnx export of 'VisionTransformer' at opset 14 failed: dynamo: wrote"):
        exporters.export(tiny, "onnx", tmp_path, input_shape=TINY_SHAPE, opset=14, onnx_exporter="dynamo")


def test_unknown_format_is_a_one_line_error_listing_the_formats(tiny: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ExportError) as err:
        exporters.export(tiny, "tflite", tmp_path)
    message = str(err.value)
    assert "\n" not in message and "'tflite'" in message
    assert all(fmt in message for fmt in exporters.FORMATS) and exporters.FORMATS == ("onnx", "torchscript", "pt2",
                                                                                       "trt")
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    with pytest.raises(ExportError, match="^bad plan: PlanError: plan file .* does not exist$"):
        exporters.export(tiny, "onnx", tmp_path, plan=tmp_path / "nowhere.json")


class Drifting(nn.Module):
    """A Python-side random factor: every export bakes in the value drawn while tracing, eager draws anew.

    (A counter in ``self`` would not do: torch.export restores mutated module attributes after tracing,
    so the first eager call sees the traced value again. A ``random.Random`` advances regardless, and
    being seeded, the values -- hence the difference -- are the same on every run.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.rng = random.Random(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * (1.0 + self.rng.random())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_broken_parity_fails_with_the_difference_and_caches_nothing(fmt: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    with pytest.raises(ExportError) as err:
        exporters.export(Drifting(), fmt, tmp_path, input_shape=(2, 8), source="drifting")
    message = str(err.value)
    assert "\n" not in message
    found = re.fullmatch(rf"{fmt} export of 'drifting' failed parity: max abs diff (\S+) between .+ and eager "
                         r"PyTorch exceeds 0\.001", message)
    assert found, message
    assert float(found.group(1)) > 1e-3
    assert list(tmp_path.iterdir()) == []  # neither an entry nor a staging folder


def test_model_mode_is_restored(tiny: nn.Module, tmp_path: Path) -> None:
    tiny.train()
    art = exporters.export(tiny, "torchscript", tmp_path, input_shape=TINY_SHAPE)
    assert tiny.training and art.manifest["parity"]["max_abs_diff"] < 1e-3  # exported (and compared) in eval mode
