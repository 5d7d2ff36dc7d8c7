"""The pruned artifacts hold no work a hand-written model of the same widths would not (issue 15).

* ONNX: the SNP-pruned ViT's graph has exactly the operators (by type and count) of
  `benchmarks.reference_models.HandWrittenViT` with the same widths, and the pruned
  EfficientFormer's graph no operator the original lacks (it has one Gather fewer: the
  pruned attention stores its bias table already gathered): pruning adds no op, mask
  or gather.
* Torch formats: the attention kernel is chosen per target and baked into the trace
  (`exporters.pipeline.attention_kernel`): CPU .pt/.pt2 hold the explicit
  matmul-softmax-matmul, CUDA ones SDPA on the pruned widths; every kernel computes
  the same function.
"""

from __future__ import annotations

from collections import Counter

import onnx
import pytest
import torch

import exporters
import snp_core
from benchmarks.reference_models import HandWrittenViT
from helpers import randomize_norms, uniform_plan
from snp_core.adapters import VitAdapter

NAME = "deit_tiny_patch16_224"
SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def pruned_vit() -> torch.nn.Module:
    original = randomize_norms(snp_core.create(NAME, **VitAdapter.tiny[1]))
    return snp_core.prune(original, uniform_plan(original, NAME, qk=0.5, v=0.25, ffn=0.5, embed=0.25)).eval()


def ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_pruned_vit_graph_has_the_hand_written_models_operators(pruned_vit, tmp_path) -> None:
    reference = HandWrittenViT.like(pruned_vit)
    x = torch.randn(SHAPE)
    with torch.inference_mode():
        assert torch.allclose(reference(x), pruned_vit(x), atol=1e-5)
    mine = exporters.export(pruned_vit, "onnx", tmp_path, input_shape=SHAPE, source=NAME)
    theirs = exporters.export(reference, "onnx", tmp_path, input_shape=SHAPE)
    assert ops(mine.path) == ops(theirs.path)
    assert mine.manifest["graph_check"]["clean"]
    assert mine.manifest["options"]["attention_kernel"] == "explicit"


def test_pruned_efficientformer_graph_has_the_originals_operators(tmp_path) -> None:
    from snp_core.adapters import EfficientFormerAdapter

    name, kwargs = EfficientFormerAdapter.tiny
    original = randomize_norms(snp_core.create(name, **kwargs)).eval()
    pruned = snp_core.prune(original, uniform_plan(original, name, qk=0.5, v=0.25, ffn=0.5, embed=0.25)).eval()
    shape = (1, *snp_core.models.input_size(original))
    before = exporters.export(original, "onnx", tmp_path, input_shape=shape, source=name)
    after = exporters.export(pruned, "onnx", tmp_path, input_shape=shape, source=name)
    more = {op: n for op, n in (ops(after.path) - ops(before.path)).items() if op != "Constant"}
    assert not more, f"the pruned graph has ops the original has not: {more}"


@pytest.mark.parametrize("kernel", snp_core.ATTENTION_KERNELS)
def test_every_attention_kernel_computes_the_same_function(pruned_vit, kernel: str) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        with snp_core.attention_kernel(pruned_vit, "explicit"):
            expected = pruned_vit(x)
        with snp_core.attention_kernel(pruned_vit, kernel):
            got = pruned_vit(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert {m.kernel for m in pruned_vit.modules() if isinstance(m, snp_core.PrunedAttention)} == {"auto"}


def torchscript_ops(path) -> set[str]:
    return {n.kind() for n in torch.jit.load(str(path)).graph.nodes()}


@pytest.mark.parametrize("target, kernel", [("cpu", "explicit"), ("cuda", "sdpa")])
def test_torchscript_bakes_the_targets_kernel(pruned_vit, tmp_path, target: str, kernel: str) -> None:
    art = exporters.export(pruned_vit, "torchscript", tmp_path, input_shape=SHAPE, source=NAME, target=target)
    kinds = torchscript_ops(art.path)
    assert ("aten::scaled_dot_product_attention" in kinds) is (kernel == "sdpa")
    assert "aten::softmax" in kinds or "aten::scaled_dot_product_attention" in kinds
    assert not {"aten::constant_pad_nd", "aten::pad", "aten::index_select"} & kinds
    assert art.manifest["options"]["target"] == target
    assert art.manifest["options"]["attention_kernel"] == kernel


def test_targets_are_cached_apart_and_a_bad_target_is_one_line(pruned_vit, tmp_path) -> None:
    cpu = exporters.export(pruned_vit, "pt2", tmp_path, input_shape=SHAPE, source=NAME, target="cpu")
    cuda = exporters.export(pruned_vit, "pt2", tmp_path, input_shape=SHAPE, source=NAME, target="cuda")
    assert cpu.manifest["cache_key"] != cuda.manifest["cache_key"]
    onnx_cpu = exporters.export(pruned_vit, "onnx", tmp_path, input_shape=SHAPE, source=NAME, target="cpu")
    onnx_cuda = exporters.export(pruned_vit, "onnx", tmp_path, input_shape=SHAPE, source=NAME, target="cuda")
    assert onnx_cuda.cached and onnx_cuda.path == onnx_cpu.path  # one graph serves every onnxruntime provider
    with pytest.raises(exporters.ExportError, match=r"unknown export target 'gpu'; choose one of: cpu, cuda"):
        exporters.export(pruned_vit, "pt2", tmp_path, input_shape=SHAPE, target="gpu")
