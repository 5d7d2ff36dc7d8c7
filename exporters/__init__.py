"""exporters: from an ``nn.Module`` (timm original or SNP-pruned) to checked, cached device artifacts.

Public API::

    import exporters
    art = exporters.export(model, "onnx", Path("cache/artifacts"),
                           input_shape=(1, 3, 224, 224),   # batch first, float32
                           opset=17,                       # onnx / trt only
                           dynamic_batch=False,            # symbolic batch dimension "batch"
                           source="deit_tiny_patch16_224", # the timm model name
                           variant="snp:deit_tiny",        # or "original"
                           plan=plan)                      # snp_core.Plan (or plan.json path) of a pruned model
    art.path, art.format, art.sha256, art.manifest, art.manifest_path, art.cached

    exporters.FORMATS == ("onnx", "torchscript", "pt2", "trt")   # the shared registry, `formats.FORMATS`
    exporters.ExportError      # every failure; the message is one line

Formats:

* ``torchscript`` -> ``model.pt``: ``torch.jit.trace`` (eval, inference mode),
  ``torch.jit.freeze``, ``torch.jit.save``; loads with ``torch.jit.load`` on a
  device that has only torch.
* ``pt2`` -> ``model.pt2``: ``torch.export.export`` + ``torch.export.save``.
* ``onnx`` -> ``model.onnx``: one self-contained file, ``onnx.checker``-clean, at
  exactly the requested opset (default 17), dynamo exporter by default with a
  TorchScript-exporter fallback (``onnx_exporter="auto"|"dynamo"|"torchscript"``;
  why: `exporters.onnx_export`).
* ``trt`` -> ``model.onnx`` as for onnx, manifest ``engine_built_on_device: true``.
  No TensorRT engine is built here: an engine is specific to the GPU, TensorRT
  version and precision of the machine that builds it, so the device agent
  builds (and caches) it from this .onnx on the device itself. (A dynamic-batch
  .onnx needs an optimisation profile there; a static one builds as is.)

Every artifact is loaded back the way a device loads it (onnxruntime CPU,
``torch.jit.load``, ``torch.export.load``) and compared with eager PyTorch on a
seeded random input; a max abs difference above 1e-3 is an ExportError, below
it the difference is recorded in the manifest (``parity``). For ONNX the manifest
also holds the op histogram and a check that the graph does no run-time index
selection on weights, padding or masking (``graph_check``; see
`exporters.onnx_export.inspect_graph`).

Artifacts are cached by content (`exporters.cache`): ``<cache_dir>/<key[:16]>/``
holds ``model.<ext>`` and ``manifest.json`` (fields: `exporters.manifest`); an
unchanged model is returned from there with ``cached=True`` without running any
exporter. Nothing here knows about devices, results or the bench CLI.
"""

from .errors import ExportError
from .onnx_export import ONNX_EXPORTERS
from .parity import TOLERANCE
from .pipeline import FORMATS, Artifact, export

__all__ = ["FORMATS", "ONNX_EXPORTERS", "TOLERANCE", "Artifact", "ExportError",
           "export"]
