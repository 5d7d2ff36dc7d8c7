"""exporters.fused_attention: the fused-attention rewrite on real exports of a 2-block ViT, run by onnxruntime.

The pruned ViT has q/k head size 8 and v head size 12 (of 16), the case the
fused kernels were assumed not to take; the original has timm's own layout.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import exporters
import snp_core
from exporters.fused_attention import FUSED_OPS, FusionError, find_sites, fuse_attention
from exporters.onnx_export import inspect_graph
from exporters.parity import eager_outputs, max_abs_diff
from helpers import randomize_norms, uniform_plan
from snp_core.adapters import VitAdapter

NAME = "deit_tiny_patch16_224"
DEPTH = 2


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, onnx.ModelProto]]:
    """variant -> (module, its plain dynamo export with a dynamic batch)."""
    original = randomize_norms(snp_core.create(NAME, **VitAdapter.tiny[1]))
    pruned = snp_core.prune(original, uniform_plan(original, NAME, qk=0.5, v=0.25, ffn=0.5, embed=0.25))
    cache = tmp_path_factory.mktemp("artifacts")
    out = {}
    for variant, model in (("original", original), ("pruned", pruned)):
        art = exporters.export(model, "onnx", cache, input_shape=(1, 3, 32, 32), source=NAME, dynamic_batch=True)
        out[variant] = (model, onnx.load(str(art.path)))
    return out


def run(proto: onnx.ModelProto, x: torch.Tensor) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, {session.get_inputs()[0].name: x.numpy()})]


def test_sites_read_head_sizes_and_scale(tiny_exports: dict) -> None:
    for variant, (qk, v) in (("original", (16, 16)), ("pruned", (8, 12))):
        sites = find_sites(tiny_exports[variant][1])
        assert [(s.heads, s.qk_dim, s.v_dim) for s in sites] == [(3, qk, v)] * DEPTH
        assert all(s.scale == pytest.approx(16 ** -0.5) for s in sites)  # pruning keeps the original scale


@pytest.mark.parametrize("variant", ["original", "pruned"])
@pytest.mark.parametrize("op", FUSED_OPS)
def test_rewrite_keeps_parity_and_leaves_one_op_per_block(tiny_exports: dict, variant: str, op: str) -> None:
    model, plain = tiny_exports[variant]
    fused, count = fuse_attention(plain, op)
    assert count == DEPTH
    onnx.checker.check_model(fused, full_check=True)
    for batch, seed in ((1, 0), (3, 1)):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        assert max_abs_diff(eager_outputs(model, x), run(fused, x)) <= 1e-4
    hist, before = Counter(n.op_type for n in fused.graph.node), Counter(n.op_type for n in plain.graph.node)
    fused_type = {"contrib_attention": "Attention", "contrib_mha": "MultiHeadAttention", "onnx_attention": "Attention"}
    assert hist[fused_type[op]] == DEPTH and "Softmax" not in hist
    domains = {n.domain for n in fused.graph.node if n.op_type == fused_type[op]}
    assert domains == ({""} if op == "onnx_attention" else {"com.microsoft"})
    if op == "onnx_attention":
        assert any(i.domain in ("", "ai.onnx") and i.version == 23 for i in fused.opset_import)
    # No run-time index selection, masking or padding: the only Gather is timm's class-token read,
    # on an activation, as in the plain export.
    assert not {"GatherElements", "GatherND", "Where", "Pad"} & set(hist)
    assert hist["Gather"] == before["Gather"] <= 1
    assert inspect_graph(fused, snp_core.count_params(model))["graph_check"]["clean"]
    # The old projection / attention weights are gone, not kept beside the fused op's.
    assert sum(t.ByteSize() for t in fused.graph.initializer) <= sum(t.ByteSize() for t in plain.graph.initializer)


def test_input_is_not_changed(tiny_exports: dict) -> None:
    plain = tiny_exports["pruned"][1]
    snapshot = plain.SerializeToString()
    fuse_attention(plain, "contrib_attention")
    assert plain.SerializeToString() == snapshot


def test_unknown_op_is_named() -> None:
    with pytest.raises(FusionError, match=r"unknown fused attention op 'flash'; choose one of: contrib_attention"):
        fuse_attention(onnx.ModelProto(), "flash")


def test_graph_without_attention_is_an_error() -> None:
    graph = onnx.helper.make_graph([onnx.helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    with pytest.raises(FusionError, match="no attention in the graph matches"):
        fuse_attention(onnx.helper.make_model(graph), "contrib_attention")


def test_rewritten_file_loads_back(tiny_exports: dict, tmp_path: Path) -> None:
    """The rewritten model saves and loads back as one file onnxruntime runs."""
    model, plain = tiny_exports["pruned"]
    path = tmp_path / "fused.onnx"
    onnx.save(fuse_attention(plain, "onnx_attention")[0], str(path))
    x = torch.randn(1, 3, 32, 32)
    assert max_abs_diff(eager_outputs(model, x), run(onnx.load(str(path)), x)) <= 1e-4
