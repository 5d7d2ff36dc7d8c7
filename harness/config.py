"""``bench.toml``: models, devices, sweep defaults and measurement settings.

The file is optional: without one, the embedded default below is used: every
model row of the paper's table (DeiT-T/S/B, EfficientFormer-L1 and their SNP
configs) as named entries, of which the default sweep times DeiT-T original and
SNP-pruned with the paper's ratios, on the local machine, as .onnx through
onnxruntime and .pt through PyTorch. A user's ``[models]`` and
``[devices]`` replace the embedded ones; other tables are merged key by key,
nested tables too (a ``[measure.quick]`` with only ``iterations`` keeps the
embedded quick profile's other values; a ``[sweeps.paper]`` with only
``formats`` keeps its model list).

Model entries are named; a pruned entry names the entry it is pruned from
(``base``), which is also what its speedup is computed against::

    [models.deit_tiny]
    timm = "deit_tiny_patch16_224"
    weights = "pretrained"            # or "random" (seeded, offline), or a checkpoint path
    # kwargs = { img_size = 160 }     # passed to timm.create_model

    [models.deit_tiny_snp]
    base = "deit_tiny"
    ratios = "paper"                  # any `bench compress --ratios` spec, or { qk = 0.5, v = 0.4, ffn = 0.3, embed = 0.2 }
    criterion = "snp"
    # round_to = 8 ; calib = "imagenet/train" ; plan = "runs/compress/x" (a saved plan instead)
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import formats
from devices.config import DeviceConfigError, DeviceSpec, parse_devices
from results import regression

DEFAULT_CONFIG = """
[paths]
store = "runs/bench.sqlite"
artifacts = "runs/artifacts"

# The paper's benchmark rows (docs/design.md §3); the default sweep below times only DeiT-T.
[models.deit_tiny]
timm = "deit_tiny_patch16_224"
weights = "random"
label = "DeiT-T"

[models.deit_tiny_snp]
base = "deit_tiny"
ratios = "paper"
criterion = "snp"

[models.deit_small]
timm = "deit_small_patch16_224"
weights = "random"
label = "DeiT-S"

[models.deit_small_snp]
base = "deit_small"
ratios = "deit_small"
label = "SNP 2.0 G"

[models.deit_small_snp_1_3g]
base = "deit_small"
ratios = "deit_small_1.3g"
label = "SNP 1.3 G"

[models.deit_base]
timm = "deit_base_patch16_224"
weights = "random"
label = "DeiT-B"

[models.deit_base_snp]
base = "deit_base"
ratios = "deit_base"
label = "SNP 6.4 G"

[models.deit_base_snp_head]
base = "deit_base"
ratios = "deit_base_head_3.5g"
label = "SNP + head 3.5 G"

[models.efficientformer_l1]
timm = "efficientformer_l1"
weights = "random"
label = "EfficientFormer-L1"

[models.efficientformer_l1_snp_0_6g]
base = "efficientformer_l1"
ratios = "efficientformer_l1_0.6g"
label = "SNP 0.6 G"

[models.efficientformer_l1_snp_0_5g]
base = "efficientformer_l1"
ratios = "efficientformer_l1_0.5g"
label = "SNP 0.5 G"

[sweep]
models = ["deit_tiny", "deit_tiny_snp"]
formats = ["onnx", "torchscript"]
batch = [1]

[measure]           # the paper: 200 warm-up runs, then >= 1000 timed runs and >= 10 s per model in total
warmup_iterations = 200
iterations = 1000
min_seconds = 10.0
timeout_s = 1800
rounds = 10         # interleaved rounds: each visits every model of a comparison group once, in a seeded order
rewarm_iterations = 20

[measure.quick]     # --quick
warmup_iterations = 20
iterations = 100
min_seconds = 2.0
timeout_s = 600
rounds = 5
rewarm_iterations = 5

[devices.local]
kind = "local"
label = "this machine"
runtimes = { onnxruntime = {}, torch = {} }

[sweeps.paper]      # every row of the paper's table: python -m bench sweep --sweep paper
models = ["deit_tiny", "deit_tiny_snp", "deit_small", "deit_small_snp", "deit_small_snp_1_3g", "deit_base",
          "deit_base_snp", "deit_base_snp_head", "efficientformer_l1", "efficientformer_l1_snp_0_6g",
          "efficientformer_l1_snp_0_5g"]
"""

FORMATS = tuple(formats.FORMATS)
#: Keys of a ``[sweeps.NAME]`` table: ``bench sweep``'s selection, plus nightly's regression threshold.
SWEEP_KEYS = ("devices", "models", "formats", "batch", "quick", "threshold")
#: The ``[sweeps.NAME]`` that ``bench nightly`` runs by default.
NIGHTLY_SWEEP = "nightly"
_MODEL_KEYS = {"timm", "weights", "kwargs", "base", "ratios", "criterion", "round_to", "calib", "num_calib", "plan",
               "top1", "label"}


class ConfigError(ValueError):
    """bench.toml is wrong: the message names the table, the key and what is accepted."""


@dataclass
class ModelSpec:
    name: str
    timm: str
    weights: str = "random"
    kwargs: dict = field(default_factory=dict)
    base: str | None = None          # pruned entries: the model entry they come from
    ratios: str | dict | None = None  # a --ratios spec, or uniform ratios per kind
    criterion: str = "snp"
    round_to: int | None = None
    calib: str | None = None
    num_calib: int = 64
    plan: str | None = None
    top1: float | None = None
    label: str = ""

    @property
    def known_top1(self) -> float | None:
        """Top-1 from the entry, else from ``metrics.json`` beside its plan (written by `bench finetune`)."""
        if self.top1 is not None or not self.plan:
            return self.top1
        folder = Path(self.plan) if Path(self.plan).is_dir() else Path(self.plan).parent
        try:
            return float(json.loads((folder / "metrics.json").read_text())["top1"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def variant(self) -> str:
        """"original", or what made the pruned variant (e.g. "snp:paper")."""
        if self.base is None:
            return "original"
        if self.plan:
            return f"plan:{Path(self.plan).name}"
        if isinstance(self.ratios, dict):
            return f"{self.criterion}:" + ",".join(f"{k}={v}" for k, v in sorted(self.ratios.items()))
        return f"{self.criterion}:{self.ratios}"


@dataclass
class Measure:
    """``[measure]``: how every model is timed. Counts and seconds are per model, over all rounds.

    A comparison group (the models one device times with one runtime, options,
    format and batch size) is measured together: `rounds` rounds, each visiting
    every model once in an order drawn from `seed`, with `rewarm_iterations`
    untimed runs before each model's block; `isolate` loads one model at a time.
    `cold_start` first loads each model in a fresh process on the device: load
    time, first inference and peak memory that the other members cannot hide.
    Between rounds the device may cool down below `cooldown_temp_c` (waiting at
    most `cooldown_max_wait_s`). `timeout_s` is per model: a group gets it once
    per member.
    """

    warmup_iterations: int
    iterations: int
    min_seconds: float
    timeout_s: float
    grace_s: float = 60.0   # the transport kills an agent this long after timeout_s (start-up, imports, report)
    rounds: int = 10
    rewarm_iterations: int = 20
    isolate: bool = False
    cold_start: bool = True
    seed: int = 0
    cooldown_temp_c: float | None = None
    cooldown_max_wait_s: float = 120.0


@dataclass
class Config:
    models: dict[str, ModelSpec]
    devices: dict[str, DeviceSpec]
    sweep: dict
    measure: Measure
    quick: Measure
    store: Path
    artifacts: Path
    sweeps: dict[str, dict] = field(default_factory=dict)

    def named_sweep(self, name: str) -> dict[str, Any]:
        """The selection of ``[sweeps.NAME]`` (``bench sweep``'s keys, plus a raw ``threshold`` when given).

        Used by ``bench sweep --sweep NAME`` and ``bench nightly``; every value is
        checked here so both commands fail the same way on a bad table.
        """
        table = self.sweeps.get(name)
        if table is None:
            raise ConfigError(f"bench.toml has no [sweeps.{name}]; known sweeps: {', '.join(self.sweeps) or 'none'}")
        where = f"bench.toml [sweeps.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = sorted(set(table) - set(SWEEP_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(SWEEP_KEYS)}")
        selection: dict[str, Any] = {}
        for key in ("devices", "models", "formats"):
            if key in table:
                value = table[key]
                if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                    raise ConfigError(f"{where}: {key} must be a list of names, got {value!r}")
                selection[key] = value
        if "batch" in table:
            value = table["batch"]
            if (not isinstance(value, list) or not value
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
                raise ConfigError(f"{where}: batch must be a list of positive integers, got {value!r}")
            selection["batch"] = value
        if "quick" in table:
            if not isinstance(table["quick"], bool):
                raise ConfigError(f"{where}: quick must be true or false, got {table['quick']!r}")
            selection["quick"] = table["quick"]
        if "threshold" in table:
            selection["threshold"] = table["threshold"]
        return selection

    def nightly_sweep(self, name: str | None) -> tuple[dict[str, Any], float | None, str]:
        """``(selection, threshold or None, description)`` of ``[sweeps.NAME]`` (default `NIGHTLY_SWEEP`).

        Without a ``[sweeps.nightly]`` table the ``[sweep]`` defaults are used, and the
        description says so; a threshold is checked with `results.regression.parse_threshold`.
        """
        wanted = name or NIGHTLY_SWEEP
        if wanted not in self.sweeps and wanted == NIGHTLY_SWEEP:
            return {}, None, f"bench.toml has no [sweeps.{wanted}]: running the [sweep] defaults"
        selection = self.named_sweep(wanted)
        threshold = selection.pop("threshold", None)
        if threshold is not None:
            try:
                threshold = regression.parse_threshold(str(threshold))
            except ValueError as exc:
                raise ConfigError(f"bench.toml [sweeps.{wanted}]: {exc}") from None
        return selection, threshold, f"sweep [sweeps.{wanted}]"

    def pick_devices(self, names: list[str] | None) -> list[DeviceSpec]:
        return [self.devices[n] for n in _pick(names or self.sweep.get("devices") or list(self.devices),
                                               self.devices, "device")]

    def pick_models(self, names: list[str] | None) -> list[ModelSpec]:
        chosen = _pick(names or self.sweep.get("models") or list(self.models), self.models, "model")
        # a pruned model is measured against its original, so the original comes along
        with_bases = []
        for name in chosen:
            base = self.models[name].base
            if base and base not in with_bases and base not in chosen:
                with_bases.append(base)
            with_bases.append(name)
        return [self.models[n] for n in with_bases]


def _pick(names: list[str], known: dict, what: str) -> list[str]:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown {what} {unknown[0]!r}; known {what}s: {', '.join(known)}")
    return list(dict.fromkeys(names))


def _parse_model(name: str, table: object) -> ModelSpec:
    where = f"bench.toml [models.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = sorted(set(table) - _MODEL_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(_MODEL_KEYS))}")
    return ModelSpec(name=name, **table) if "timm" in table else ModelSpec(name=name, timm="", **table)


#: ``[measure]`` keys: (type, smallest value or None). Everything else in the table is refused by name.
_MEASURE_KEYS: dict[str, tuple[type, float | None]] = {
    "warmup_iterations": (int, 0), "iterations": (int, 1), "min_seconds": (float, 0), "timeout_s": (float, 1),
    "grace_s": (float, 0), "rounds": (int, 1), "rewarm_iterations": (int, 0), "isolate": (bool, None),
    "cold_start": (bool, None),
    "seed": (int, None), "cooldown_temp_c": (float, None), "cooldown_max_wait_s": (float, 0),
}


def _parse_measure(table: dict, where: str) -> Measure:
    where = f"bench.toml [{where}]"
    unknown = sorted(set(table) - set(_MEASURE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(_MEASURE_KEYS)}")
    missing = [k for k in ("warmup_iterations", "iterations", "min_seconds", "timeout_s") if k not in table]
    if missing:
        raise ConfigError(f"{where}: needs {', '.join(missing)}")
    values = {}
    for key, value in table.items():
        kind, least = _MEASURE_KEYS[key]
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, int) and not isinstance(value, bool) if kind is int else
              isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok or (least is not None and value < least):
            wanted = {bool: "true or false", int: "an integer", float: "a number"}[kind]
            bound = f" >= {least:g}" if least is not None else ""
            raise ConfigError(f"{where}: {key} must be {wanted}{bound}, got {value!r}")
        values[key] = float(value) if kind is float else value
    return Measure(**values)


#: What a device name may be made of: it is part of every job key (``|`` separates their fields), of the default
#: local workdir and of log lines.
_DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DEVICE_NAME_RULE = "letters, digits, '_', '-' and '.', starting with a letter or digit"


def _merge(base: object, over: object) -> object:
    """`over` on top of `base`, key by key at every depth of tables (anything else in `over` replaces)."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{key: _merge(base.get(key), value) for key, value in over.items()}}
    return over


def _table_name(name: str) -> str:
    """A table key as TOML writes it: bare when it can be, quoted otherwise (``[devices."a|b"]``)."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _check_names(doc: dict, source: str) -> None:
    """Refuse device and model names that cannot be part of a job key, before any run is created."""
    devices, models = doc.get("devices"), doc.get("models")  # not tables: refused later, with their own message
    for name in devices if isinstance(devices, dict) else ():
        if not _DEVICE_NAME.fullmatch(name):
            raise ConfigError(f"{source} [devices.{_table_name(name)}]: device name {name!r} may only use "
                              f"{_DEVICE_NAME_RULE}")
    for name in models if isinstance(models, dict) else ():
        if not name or "|" in name or name != name.strip():
            raise ConfigError(f"{source} [models.{_table_name(name)}]: model name {name!r} must be non-empty, "
                              "without '|' (it separates the fields of a job key) or surrounding spaces")


def _split_measure(doc: dict, source: str) -> tuple[dict, dict]:
    """``([measure] without its quick table, the --quick settings)``.

    The quick settings are the embedded ``[measure.quick]`` profile with the user's
    ``[measure.quick]`` over it, key by key, on top of ``[measure]``: a partial quick
    table never falls back to the full profile's iterations or timeout, while the
    settings the quick profile does not name (``grace_s``, ``isolate``, ``cooldown_*``,
    ...) are ``[measure]``'s.
    """
    measure = doc.get("measure", {})
    if not isinstance(measure, dict):
        raise ConfigError(f"{source} [measure]: must be a table, got {measure!r}")
    measure = dict(measure)
    quick = measure.pop("quick", {})
    if not isinstance(quick, dict):
        raise ConfigError(f"{source} [measure.quick]: must be a table, got {quick!r}")
    return measure, {**measure, **quick}


def load(path: Path | None = None) -> Config:
    """The embedded default, overlaid with `path` (default ./bench.toml when it exists).

    ``[models]`` and ``[devices]`` in the user's file replace the embedded ones whole;
    other tables are merged key by key, nested tables included (`_merge`).
    """
    doc = tomllib.loads(DEFAULT_CONFIG)
    source = "bench.toml"
    if path is None and Path("bench.toml").is_file():
        path = Path("bench.toml")
    if path is not None:
        source = str(path)
        try:
            user = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
        if "models" in user and "models" not in user.get("sweep", {}):
            doc["sweep"].pop("models")  # the embedded model list names embedded models: sweep all of the user's
        for key, value in user.items():
            # a user's models / devices replace the embedded ones; every other table merges at every depth
            doc[key] = value if key in ("models", "devices") else _merge(doc.get(key), value)
        _check_names(user, source)

    models = {name: _parse_model(name, table) for name, table in doc.get("models", {}).items()}
    for spec in models.values():
        if spec.base is not None:
            if spec.base not in models or models[spec.base].base is not None:
                raise ConfigError(f"bench.toml [models.{spec.name}]: base {spec.base!r} must name an unpruned "
                                  f"model entry; known: {', '.join(n for n, m in models.items() if m.base is None)}")
            base = models[spec.base]
            spec.timm, spec.weights, spec.kwargs = spec.timm or base.timm, base.weights, base.kwargs
            if spec.ratios is None and spec.plan is None:
                spec.ratios = "paper"
        elif not spec.timm:
            raise ConfigError(f"bench.toml [models.{spec.name}]: needs timm = \"<timm model name>\" (or base = ...)")
    try:
        devices = parse_devices(doc.get("devices"))
    except DeviceConfigError as exc:
        raise ConfigError(str(exc)) from None
    measure, quick = _split_measure(doc, source)
    sweep = dict(doc.get("sweep", {}))
    for fmt in sweep.get("formats", []):
        if fmt not in FORMATS:
            raise ConfigError(f"bench.toml [sweep]: format {fmt!r} is not one of: {', '.join(FORMATS)}")
    paths = doc.get("paths", {})
    return Config(models=models, devices=devices, sweep=sweep, measure=_parse_measure(measure, "measure"),
                  quick=_parse_measure(quick, "measure.quick"), store=Path(paths["store"]),
                  artifacts=Path(paths["artifacts"]), sweeps=doc.get("sweeps", {}))
