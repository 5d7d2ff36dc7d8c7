"""ONNX artifacts (``.onnx``): the Raspberry Pi column (onnxruntime) and the input of TensorRT.

Which exporter
--------------
``torch.onnx.export(dynamo=True)`` (torch.export -> ONNX, then onnxscript's graph
optimiser) is the default, with a fallback to the TorchScript-based exporter
(``dynamo=False``). Measured on DeiT-T, torch 2.14.1 / onnxscript 0.7.2:

* dynamo: 503 nodes original / 371 pruned with a dynamic batch (428 / 368 at a
  static batch 1), 3-5 s; no Constant or Identity nodes, the pruned q/k/v come
  out of one Split.
* TorchScript-based: 955 / 929 nodes, 0.3 s; 251-272 Constant and 83-94 Identity
  nodes, Shape/Gather/Unsqueeze/Concat shape arithmetic in every block.

Both are exact (max abs diff < 1e-6 against eager). The dynamo graph is the
compact one the benchmark wants -- next to no run-time shape arithmetic,
nothing a runtime has to fold away first -- and the TorchScript exporter is
deprecated in torch 2.9+. Its only cost is export time, paid once per model (artifacts are
cached). The fallback (``onnx_exporter="auto"``) exists for two cases the dynamo
exporter cannot serve: a model torch.export cannot capture, and an opset below
18 that onnx's version converter cannot reach (dynamo builds opset 18 and
converts down; 17 works for ViTs, 14-16 do not because LayerNormalization has no
earlier version -- the TorchScript exporter decomposes it). Below opset 14
neither works for timm ViTs (scaled_dot_product_attention needs opset 14).

Default opset is 17: the oldest opset with a native LayerNormalization (one
kernel instead of seven ops, on onnxruntime and TensorRT alike) and within
what TensorRT 8.6's parser accepts. Older TensorRT (JetPack 4.x on a Jetson
Nano) may need 14-16, which "auto" reaches through the fallback. The opset
actually written is read back from the file and must equal the one asked for.

One file
--------
Devices receive one content-addressed blob per artifact, so the model is written
as a single self-contained ``.onnx`` (weights inline). Only a model over the 2 GB
protobuf limit keeps its weights in ``model.onnx.data`` beside it (listed in the
manifest); DeiT-B is 350 MB.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from .errors import ExportError, first_line

INPUT_NAME, OUTPUT_NAME = "input", "output"
#: ``onnx_exporter`` values: dynamo with TorchScript fallback, or one of them only.
ONNX_EXPORTERS = ("auto", "dynamo", "torchscript")
#: Weights above this go to an external data file (protobuf cannot serialise 2 GiB).
SINGLE_FILE_LIMIT = 2 * 1024**3 - 64 * 1024**2

#: Ops that read weights by index at run time (index_select / embedding lookups) when their data is a weight.
GATHER_OPS = frozenset({"Gather", "GatherElements", "GatherND"})
#: Ops that move or select elements by computed indices: none belong in a pruned ViT.
INDEX_OPS = frozenset({"ScatterND", "ScatterElements", "Scatter", "NonZero", "Compress"})
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                         onnx.TensorProto.DOUBLE})

_NOISY_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir", "torch.export", "torch._dynamo", "torch._export",
                  "torch.fx.experimental.symbolic_shapes")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress and version-conversion chatter; our own checks report failures."""
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    try:
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def written_opset(proto: onnx.ModelProto) -> int | None:
    """The default-domain opset a model file declares."""
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_batch: bool,
                   external: bool) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    with _quiet():
        torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes, external_data=external,
                          optimize=True, verbose=False)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_batch: bool,
                        external: bool) -> None:
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with _quiet(), torch.no_grad():
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes, do_constant_folding=True)


_BACKENDS: dict[str, Callable[..., None]] = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


def _clear(folder: Path) -> None:
    for entry in folder.iterdir():
        entry.unlink()


def _one_file(path: Path, weight_bytes: int) -> list[str]:
    """Fold any external data the exporter wrote back into `path`; return the files that must stay beside it."""
    extras = sorted(p for p in path.parent.iterdir() if p != path)
    if not extras:
        return []
    if weight_bytes >= SINGLE_FILE_LIMIT:
        return [p.name for p in extras]
    proto = onnx.load(str(path), load_external_data=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    for p in extras:
        p.unlink()
    return []


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, opset: int, dynamic_batch: bool,
                exporter: str, label: str) -> dict:
    """Write `model` as ONNX to `path` (in an otherwise empty folder); check it; return manifest entries."""
    if exporter not in ONNX_EXPORTERS:
        raise ExportError(f"unknown onnx exporter {exporter!r}; choose one of: {', '.join(ONNX_EXPORTERS)}")
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    external = weight_bytes >= SINGLE_FILE_LIMIT
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    problems: list[str] = []
    used = None
    for backend in order:
        _clear(path.parent)
        try:
            _BACKENDS[backend](model, example, path, opset, dynamic_batch, external)
        except Exception as exc:  # exporters raise anything from UserError to RuntimeError
            problems.append(f"{backend}: {first_line(exc)}")
            continue
        got = written_opset(onnx.load(str(path), load_external_data=False))
        if got != opset:
            problems.append(f"{backend}: wrote opset {got} instead of {opset}")
            continue
        used = backend
        break
    if used is None:
        raise ExportError(f"onnx export of {label!r} at opset {opset} failed: {'; '.join(problems)}")
    extra_files = _one_file(path, weight_bytes)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx export of {label!r} fails onnx.checker: {first_line(exc)}") from None
    return {"exporter": f"torch.onnx.export(dynamo={used == 'dynamo'}) (torch {torch.__version__})",
            "onnx_exporter": used, "exporter_fallback_reason": "; ".join(problems) or None, "opset": opset,
            "input_name": INPUT_NAME, "output_names": [OUTPUT_NAME], "external_data_files": extra_files}


# -- graph inspection ---------------------------------------------------------

def _all_nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node: the main graph, subgraphs of control-flow nodes, and local functions."""
    def walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        yield from walk(g)

    yield from walk(proto.graph)
    for fn in proto.functions:
        yield from fn.node


def _output_ranks(proto: onnx.ModelProto) -> dict[str, int]:
    """Rank of every value whose shape onnx's shape inference knows."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # > 2 GB protos, unknown custom ops: ranks stay unknown (treated conservatively)
        inferred = proto
    ranks = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            ranks[vi.name] = len(t.shape.dim)
    return ranks


def inspect_graph(proto: onnx.ModelProto, params: int) -> dict:
    """Op histogram plus the "no extra work in the pruned graph" check (docs/design.md §3).

    * ``weight_gathers``: Gather-style nodes whose *data* input is a weight
      (initializer or Constant) -- an index_select of kept neurons at run time.
      A Gather on an activation (timm's class-token read ``x[:, 0]``) is not one.
    * ``index_ops``: Scatter / NonZero / Compress, none of which a ViT needs.
    * ``pads``: Pad nodes (padding pruned widths back up at run time).
    * ``masks``: Where nodes on tensors of rank >= 2 (or unknown rank) -- a Where
      on a rank-1 shape vector is the TorchScript exporter's shape arithmetic --
      and Mul/And with a constant 0/1 tensor that has at least one 0 (a weight
      or activation mask; an all-ones tensor masks nothing).
    * ``float_weight_elements``: elements in float initializers/Constants with more
      than one element, beside the module's ``params``: a graph that kept full-size
      weights to index or mask would carry more than the module has. (Equal at
      batch 1 / dynamic batch; constant folding of e.g. ``cls_token.expand(B)``
      adds a little at a static batch > 1; identical tensors, such as freshly
      initialised LayerNorm weights, may be stored once and count less.)
    """
    nodes = list(_all_nodes(proto))
    hist = Counter(n.op_type for n in nodes)
    constants: dict[str, onnx.TensorProto] = {i.name: i for i in proto.graph.initializer}
    for n in nodes:
        if n.op_type == "Constant":
            for attr in n.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    constants[n.output[0]] = attr.t

    def value(name: str) -> np.ndarray | None:
        tensor = constants.get(name)
        if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
            return None
        return numpy_helper.to_array(tensor)

    ranks = _output_ranks(proto)
    weight_gathers, masks = [], []
    for n in nodes:
        if n.op_type in GATHER_OPS and n.input and n.input[0] in constants:
            weight_gathers.append(f"{n.op_type} {n.name or n.output[0]} on {n.input[0]}")
        elif n.op_type == "Where" and ranks.get(n.output[0], 99) >= 2:
            masks.append(f"Where {n.name or n.output[0]}")
        elif n.op_type in ("Mul", "And"):
            for name in n.input:
                arr = value(name) if name in constants else None
                if arr is not None and arr.size > 1 and np.isin(arr, (0, 1)).all() and (arr == 0).any():
                    masks.append(f"{n.op_type} {n.name or n.output[0]} by 0/1 constant {name}")
    float_elements = sum(int(np.prod(t.dims)) for t in constants.values()
                         if t.data_type in FLOAT_TYPES and int(np.prod(t.dims)) > 1)
    index_ops = {op: hist[op] for op in sorted(INDEX_OPS) if hist.get(op)}
    check = {"weight_gathers": weight_gathers, "index_ops": index_ops, "pads": hist.get("Pad", 0), "masks": masks,
             "float_weight_elements": float_elements, "params": params}
    check["clean"] = not (weight_gathers or index_ops or check["pads"] or masks)
    return {"op_histogram": dict(sorted(hist.items())), "nodes": len(nodes), "graph_check": check}


def runner(path: Path) -> tuple[Callable[[torch.Tensor], list[np.ndarray]], str]:
    """An onnxruntime CPU session on the saved file and (run, runtime name) for parity."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float32) for o in session.run(None, {name: x.numpy()})]

    return run, f"onnxruntime {ort.__version__} CPUExecutionProvider"
