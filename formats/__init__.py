"""The vocabulary every stage shares: artifact formats, the runtimes that time them, and which takes which.

One registry, read by the exporters (what file a format is), the device layer
(which formats a configured runtime takes, what the agent is told it receives),
the harness (which jobs a device gets) and the reports (how a format or runtime
is shown). Adding a runtime is one `Runtime` entry here plus one backend in
``devices/agent.py``; the agent keeps its own small table (``RUNTIME_FORMATS``,
``RUNTIME_OPTIONS``) because it must stay one standard-library file, and
``tests/devices/test_agent.py`` holds the two tables together.

This module imports nothing (no torch), so every command can read it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    """An artifact format, as the sweep names it."""

    name: str
    #: The file the exporter writes: ``model.<extension>``.
    extension: str
    #: What the device agent is told it receives (a TensorRT job ships the .onnx and builds the engine there).
    agent_format: str
    #: How tables and figures show it, e.g. ".pt" for TorchScript.
    display: str
    #: True when the device turns the shipped file into what it runs (TensorRT engines).
    built_on_device: bool = False


@dataclass(frozen=True)
class Runtime:
    """A runtime the device agent can time, with the formats it takes (first = preferred) and its options."""

    name: str
    display: str
    formats: tuple[str, ...]
    #: Option keys of ``[devices.NAME] runtimes = { NAME = { ... } }`` the agent understands.
    options: tuple[str, ...]
    #: The options ``bench tune`` searches on a device (harness/tune.py), in search order: settings that change
    #: the speed without changing the result. Precision or the device are choices of the user, never tuned.
    tunable: tuple[str, ...] = ()
    #: The multiple its kernels like kept widths rounded to (``round_to``): the default of a latency-budget search
    #: on a device with this runtime (``bench compress --target-latency``). Measured by benchmarks/round_to.py
    #: (docs/efficiency.md); TensorRT's is NVIDIA's guidance (multiples of 8 for FP16 GEMMs), not measured here.
    round_to: int | None = None


#: Formats in the order tables show them.
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", "onnx", "onnx", ".onnx"),
    Format("torchscript", "pt", "torchscript", ".pt"),
    Format("pt2", "pt2", "pt2", ".pt2"),
    Format("trt", "onnx", "onnx", ".trt", built_on_device=True),
)}

#: Runtimes in the order tables show them.
RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("onnxruntime", "onnxruntime", ("onnx",),
            ("threads", "providers", "execution_provider", "graph_optimization", "allow_spinning", "execution_mode",
             "inter_op_threads"),
            ("threads", "graph_optimization", "execution_mode", "allow_spinning"), round_to=16),
    Runtime("torch", "PyTorch", ("torchscript", "pt2"), ("threads", "interop_threads", "device"), ("threads",),
            round_to=16),
    Runtime("tensorrt", "TensorRT", ("trt",), ("precision", "device", "workspace_mb"), round_to=8),
)}

#: The sweep's formats when neither the command line nor bench.toml chooses.
DEFAULT_SWEEP_FORMATS = ("onnx", "torchscript")


def format_order(name: str) -> int:
    """Sort key of a format name: registry order, unknown names last."""
    return list(FORMATS).index(name) if name in FORMATS else len(FORMATS)


def display_format(name: str) -> str:
    """How a format is shown (".onnx", ".pt"); an unknown name as it is."""
    return FORMATS[name].display if name in FORMATS else name


def display_runtime(name: str) -> str:
    """How a runtime is shown ("PyTorch"); an unknown name as it is."""
    return RUNTIMES[name].display if name in RUNTIMES else name


__all__ = ["DEFAULT_SWEEP_FORMATS", "FORMATS", "Format", "RUNTIMES", "Runtime", "display_format", "display_runtime",
           "format_order"]
