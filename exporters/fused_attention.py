"""Rewrite each ViT block's exported attention into one fused attention operator (onnxruntime).

Why
---
The dynamo exporter writes a ViT block's attention as about a dozen small ops
(Split or Reshape/Slice of the packed qkv projection, Reshape/Transpose per q, k
and v, Mul by the softmax scale, MatMul, Softmax, MatMul, Transpose, Reshape).
onnxruntime's transformer optimizer does not fuse that layout (it fuses 0
attentions in DeiT-T, original or SNP-pruned), so every block pays for the
separate kernels and the transposed copies between them. onnxruntime has fused
attention kernels that accept a value head size different from the q/k head size
-- which SNP-pruned attention needs -- so the rewrite works for pruned blocks:

* ``"contrib_attention"``: ``com.microsoft.Attention(input, weights, bias)`` with
  ``qkv_hidden_sizes = [H*d_qk, H*d_qk, H*d_v]``: the packed qkv projection GEMM is
  done inside the op ("The qkv_hidden_sizes is required only when K and V have
  different hidden sizes", onnxruntime's schema). The projection MatMul + Add go.
* ``"contrib_mha"``: ``com.microsoft.MultiHeadAttention(q, k, v, bias)`` on a Split
  of the projection MatMul (value "with shape (batch_size, kv_sequence_length,
  v_hidden_size)"; the bias of the projection is added inside the op).
* ``"onnx_attention"``: the standard ``Attention`` (opset 23+: V is
  ``(batch, kv_seq, v_hidden_size)`` with ``v_hidden_size = kv_num_heads * v_head_size``)
  on a Split of the projection; the model's opset is converted to 23 first.

All three are onnxruntime-only in practice (TensorRT parses neither the
com.microsoft domain nor, in 8.6, opset 23), so the plain graph stays the
default and this is an opt-in rewrite for onnxruntime devices.

What it matches
---------------
Anchored on every ``Softmax(axis=-1)`` whose input is ``MatMul(q', k')`` and whose
only consumer is ``MatMul(softmax, v')`` followed by ``Transpose(perm=0,2,1,3)`` and
``Reshape`` (the block's ``[B, N, H*d_v]`` attention output). From q', k' and v'
it walks up through Reshape / Transpose / Squeeze / Slice / Mul-by-a-scalar-constant
until all three reach one tensor ``P = Add(MatMul(x, W), b)`` (``W``, ``b``
constants): the packed projection. q, k and v must be the first, second and third
part of ``P`` -- outputs 0/1/2 of one Split (`snp_core`'s ``PrunedAttention``) or
Slices 0/1/2 on the leading axis of one 5-D permuted view (timm's ``Attention``,
where d_qk must equal d_v). The head count and head sizes come from onnx shape
inference (q' is ``[B, H, N, d_qk]``, v' is ``[B, H, N, d_v]``); ``W`` must be
``H*(2*d_qk + d_v)`` wide and a Split must cut its last axis into exactly
``[H*d_qk, H*d_qk, H*d_v]``. The scale is the product of the scalar Muls on the q and
k paths (none is allowed on v). Anything else is left as it is. Then nodes nothing
reads any more, and unused initializers, are removed.

Measured (onnxruntime 1.32 CPU, DeiT-T / DeiT-S 1.3G, `benchmarks/attention_paths.py`)
-------------------------------------------------------------------------------------
All three ops run with d_qk != d_v and match eager PyTorch within 1e-6. At one
thread the whole model gets 0-4% faster at best ("onnx_attention" most
consistently, ~0.96x of the plain graph on pruned DeiT-T), within the noise for
the others: onnxruntime already folds the scale and k's transpose into one
FusedMatMul, and the fused kernels do the same softmax over H*N*N scores, which
SNP does not shrink (it keeps every head and token).

The rewrite changes the order of float operations only; callers check parity
against eager PyTorch as for any export (`exporters.parity`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Fused attention operators the rewrite can emit (see the module docstring).
FUSED_OPS = ("contrib_attention", "contrib_mha", "onnx_attention")
#: Opset the standard Attention operator needs.
ONNX_ATTENTION_OPSET = 23
MS_DOMAIN = "com.microsoft"
#: Ops a q, k or v path may pass through between the projection and the attention MatMuls.
_PATH_OPS = frozenset({"Split", "Reshape", "Transpose", "Squeeze", "Slice", "Mul"})


class FusionError(ValueError):
    """The graph has nothing the rewrite can fuse, or an unknown fused op was asked for."""


@dataclass
class AttentionSite:
    """One block's attention as found in the graph: what the fused op needs to replace it."""

    x: str          # input of the qkv projection MatMul
    weight: str     # its weight (constant, [C, H*(2*d_qk + d_v)])
    bias: str       # the projection bias (constant)
    projected: str  # MatMul(x, W): the packed q|k|v before the bias
    packed: str     # Add(MatMul(x, W), b): the packed q|k|v tensor
    output: str     # the Reshape output [B, N, H*d_v] that the fused op produces instead
    heads: int
    qk_dim: int
    v_dim: int
    scale: float
    nodes: list[str]  # names of the attention nodes the fused op replaces (for profiles)


class _Graph:
    """Producer / consumer / constant look-ups over one onnx graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = {out: n for n in graph.node for out in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.constants = {i.name: i for i in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.constants[n.output[0]] = n.attribute[0].t

    def const(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def const_dims(self, name: str) -> list[int] | None:
        """Shape of a constant without reading its data (weights can be large)."""
        tensor = self.constants.get(name)
        return None if tensor is None else list(tensor.dims)

    def only_consumer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Static dims (None where symbolic) of every value onnx shape inference knows."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes


def _walk_up(g: _Graph, name: str) -> tuple[tuple[str, str, str, str, str], float,
                                             tuple[str, int, onnx.NodeProto], list[str]] | None:
    """Follow a q/k/v path up to the packed projection.

    Returns (`_projection`, scalar factor, (how, part, node), names of the nodes passed):
    ``how`` is "split" (part = output index of Split `node`) or "slice" (part = start of
    the one-wide Slice `node` on axis 0); the projection must be right above it.
    """
    factor, part, visited = 1.0, None, []
    while True:
        node = g.producer.get(name)
        if node is None or node.op_type not in _PATH_OPS:
            return None
        visited.append(node.name)
        if node.op_type == "Split":
            part = ("split", list(node.output).index(name), node)
        elif node.op_type == "Slice":
            starts, ends = g.const(node.input[1]), g.const(node.input[2])
            axes = g.const(node.input[3]) if len(node.input) > 3 else None
            if starts is None or ends is None or axes is None or axes.tolist() != [0] or ends[0] - starts[0] != 1:
                return None
            part = ("slice", int(starts[0]), node)
        elif node.op_type == "Mul":
            data = [i for i in node.input if i not in g.constants]
            scalars = [i for i in node.input if i in g.constants and int(np.prod(g.const_dims(i))) == 1]
            if len(data) != 1 or len(scalars) != 1:
                return None
            factor *= float(g.const(scalars[0]).reshape(()))
            name = data[0]
            continue
        name = node.input[0]
        if part is not None:
            projection = _projection(g, name)
            return None if projection is None else (projection, factor, part, visited)


def _projection(g: _Graph, packed: str) -> tuple[str, str, str, str, str] | None:
    """(x, W, b, MatMul output, Add output) when `packed` is Add(MatMul(x, W), b), W and b constant.

    Also accepts the Add up to two Reshape/Transpose further up (timm reshapes the packed
    projection to [B, N, 3, H, D] and permutes it before slicing q, k and v).
    """
    node = g.producer.get(packed)
    for _ in range(2):
        if node is not None and node.op_type in ("Reshape", "Transpose"):
            node = g.producer.get(node.input[0])
    if node is None or node.op_type != "Add":
        return None
    matmul = next((g.producer[i] for i in node.input if i in g.producer and g.producer[i].op_type == "MatMul"), None)
    bias = next((i for i in node.input if i in g.constants), None)
    if matmul is None or bias is None or matmul.input[1] not in g.constants:
        return None
    return matmul.input[0], matmul.input[1], bias, matmul.output[0], node.output[0]


def _splits_last_axis(g: _Graph, split: onnx.NodeProto, sizes: list[int]) -> bool:
    """Whether `split` cuts the packed [B, N, C] projection's last axis into exactly `sizes`."""
    axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
    given = g.const(split.input[1]) if len(split.input) > 1 and split.input[1] in g.constants else None
    return axis in (-1, 2) and given is not None and given.tolist() == sizes


def find_sites(model: onnx.ModelProto) -> list[AttentionSite]:
    """Every attention in `model` that matches the pattern of the module docstring."""
    g, shapes, sites = _Graph(model.graph), _shapes(model), []
    for softmax in model.graph.node:
        if softmax.op_type != "Softmax":
            continue
        axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
        qk = g.producer.get(softmax.input[0])
        av = g.only_consumer(softmax.output[0], "MatMul")
        if axis != -1 or qk is None or qk.op_type != "MatMul" or av is None or av.input[0] != softmax.output[0]:
            continue
        out_t = g.only_consumer(av.output[0], "Transpose")
        out_r = out_t and g.only_consumer(out_t.output[0], "Reshape")
        if out_r is None or list(helper.get_attribute_value(out_t.attribute[0])) != [0, 2, 1, 3]:
            continue
        paths = [_walk_up(g, qk.input[0]), _walk_up(g, qk.input[1]), _walk_up(g, av.input[1])]
        if any(p is None for p in paths) or len({p[0] for p in paths}) != 1:
            continue
        how = {p[2][0] for p in paths}
        if [p[2][1] for p in paths] != [0, 1, 2] or len(how) != 1 or paths[2][1] != 1.0:
            continue  # q, k, v out of order, mixed layouts, or a scale on v
        q_shape, v_shape = shapes.get(qk.input[0]), shapes.get(av.input[1])
        if not q_shape or not v_shape or len(q_shape) != 4 or None in q_shape[1:] + v_shape[1:]:
            continue
        heads, qk_dim, v_dim = q_shape[1], q_shape[3], v_shape[3]
        x, weight, bias, projected, packed = paths[0][0]
        sizes = [heads * qk_dim, heads * qk_dim, heads * v_dim]
        if g.const_dims(weight)[-1] != sum(sizes) or v_shape[1] != heads:
            continue
        if how == {"split"} and not _splits_last_axis(g, paths[0][2][2], sizes):
            continue
        if how == {"slice"} and qk_dim != v_dim:  # timm's [B, N, 3, H, D] view has one head size
            continue
        nodes = [n for p in paths for n in p[3]] + [qk.name, softmax.name, av.name, out_t.name, out_r.name]
        sites.append(AttentionSite(x=x, weight=weight, bias=bias, projected=projected, packed=packed,
                                   output=out_r.output[0], heads=heads, qk_dim=qk_dim, v_dim=v_dim,
                                   scale=paths[0][1] * paths[1][1], nodes=list(dict.fromkeys(nodes))))
    return sites


def _fused_nodes(site: AttentionSite, op: str, index: int) -> tuple[list[onnx.NodeProto], list]:
    """The node(s) and initializers that compute `site.output` with fused op `op`."""
    sizes = [site.heads * site.qk_dim, site.heads * site.qk_dim, site.heads * site.v_dim]
    name = f"fused_attention_{index}"
    if op == "contrib_attention":
        return [helper.make_node("Attention", [site.x, site.weight, site.bias], [site.output], name=name,
                                 domain=MS_DOMAIN, num_heads=site.heads, qkv_hidden_sizes=sizes,
                                 scale=site.scale)], []
    sizes_name = f"{name}_split_sizes"
    q, k, v = (f"{name}_{part}" for part in "qkv")
    init = [numpy_helper.from_array(np.array(sizes, dtype=np.int64), sizes_name)]
    if op == "contrib_mha":
        return [helper.make_node("Split", [site.projected, sizes_name], [q, k, v], name=f"{name}_split", axis=-1),
                helper.make_node("MultiHeadAttention", [q, k, v, site.bias], [site.output], name=name,
                                 domain=MS_DOMAIN, num_heads=site.heads, scale=site.scale)], init
    return [helper.make_node("Split", [site.packed, sizes_name], [q, k, v], name=f"{name}_split", axis=-1),
            helper.make_node("Attention", [q, k, v], [site.output], name=name, q_num_heads=site.heads,
                             kv_num_heads=site.heads, scale=site.scale)], init


def _prune_dead(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nothing reads (graph outputs count as read), then unused initializers."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    used = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)


def _topological(nodes: Iterable[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """`nodes` in an order where every input is produced before it is read."""
    pending, ordered = list(nodes), []
    while pending:
        ready = [n for n in pending if all(not i or i in available for i in n.input)]
        if not ready:
            raise FusionError("fused graph has a cycle or an input no node produces")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if n not in ready]
    return ordered


def fuse_attention(model: onnx.ModelProto, op: str = "contrib_attention") -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with every matched attention replaced by fused op `op`; and how many were replaced."""
    if op not in FUSED_OPS:
        raise FusionError(f"unknown fused attention op {op!r}; choose one of: {', '.join(FUSED_OPS)}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    sites = find_sites(out)
    if not sites:
        raise FusionError("no attention in the graph matches Softmax(MatMul(q, k)) @ v on a packed qkv projection")
    replaced = {s.output for s in sites}
    nodes = [n for n in out.graph.node if not set(n.output) & replaced]
    for index, site in enumerate(sites):
        new_nodes, new_inits = _fused_nodes(site, op, index)
        nodes.extend(new_nodes)
        out.graph.initializer.extend(new_inits)
    available = {i.name for i in out.graph.input} | {i.name for i in out.graph.initializer}
    del out.graph.node[:]
    out.graph.node.extend(_topological(nodes, available))
    _prune_dead(out)
    if op == "onnx_attention":
        out = _at_opset(out, max(_default_opset(out), ONNX_ATTENTION_OPSET))
    elif not any(i.domain == MS_DOMAIN for i in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out, len(sites)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")), 1)


def _at_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """`model` with its default domain at `opset`: the other ops converted, the new Attention nodes kept."""
    if _default_opset(model) == opset:
        return model
    attention = [n for n in model.graph.node if n.op_type == "Attention" and not n.domain]
    for n in attention:  # the converter cannot convert an op newer than the source opset: hide them meanwhile
        n.domain = "fused.attention.placeholder"
    model.opset_import.append(helper.make_opsetid("fused.attention.placeholder", 1))
    converted = onnx.version_converter.convert_version(model, opset)
    for n in converted.graph.node:
        if n.domain == "fused.attention.placeholder":
            n.domain = ""
    kept = [i for i in converted.opset_import if i.domain != "fused.attention.placeholder"]
    del converted.opset_import[:]
    converted.opset_import.extend(kept)
    return converted
