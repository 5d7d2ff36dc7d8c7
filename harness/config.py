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

import importlib.util
import json
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import formats
from devices.config import DeviceConfigError, DeviceSpec, parse_devices
from formats.schema import SchemaError
from formats.schema import toml_key as schema_key
from results import store_backends
from results.store import describe as describe_store

from . import schema

log = logging.getLogger(__name__)

DEFAULT_CONFIG = """
[paths]
root = "runs"       # every output goes here: the store (ROOT/bench.sqlite), artifacts (ROOT/artifacts), local devices' copies

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
batch_size = [1]

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
#: The ``[sweeps.NAME]`` that ``bench nightly`` runs by default.
NIGHTLY_SWEEP = "nightly"
#: `Config.source` when no file was read.
EMBEDDED = "the embedded default"


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
    """A validated ``bench.toml`` over the embedded default: what every command works from."""

    models: dict[str, ModelSpec]
    devices: dict[str, DeviceSpec]
    sweep: dict
    measure: Measure
    quick: Measure
    store: Path | str  # a SQLite file, or a postgresql:// URL (results.store_backends)
    artifacts: Path
    sweeps: dict[str, dict] = field(default_factory=dict)
    #: The file read (as given), or `EMBEDDED` when there was none.
    source: str = EMBEDDED
    #: The outputs root (``--root``, else ``[paths] root``): store, artifacts and local devices' copies default here.
    root: Path = Path("runs")

    def describe(self) -> str:
        """One line saying where this command's settings come from and where its outputs go."""
        read = EMBEDDED if self.source == EMBEDDED else f"{self.source} over {EMBEDDED}"
        return f"config: {read}; outputs under {self.root}/; store {describe_store(self.store)}"

    def named_sweep(self, name: str) -> dict[str, Any]:
        """The selection of ``[sweeps.NAME]`` (``bench sweep``'s keys, plus a raw ``threshold`` when given).

        Used by ``bench sweep --sweep NAME`` and ``bench nightly``; the table was
        checked when the file was read (`harness.schema.NAMED_SWEEP`).
        """
        if name not in self.sweeps:
            raise ConfigError(f"{self.source} has no [sweeps.{name}]; known sweeps: {', '.join(self.sweeps) or 'none'}")
        return dict(self.sweeps[name])

    def nightly_sweep(self, name: str | None) -> tuple[dict[str, Any], float | None, str]:
        """``(selection, threshold or None, description)`` of ``[sweeps.NAME]`` (default `NIGHTLY_SWEEP`).

        Without a ``[sweeps.nightly]`` table the ``[sweep]`` defaults are used, and the
        description says so; a threshold is checked with `results.regression.parse_threshold`.
        """
        from results import regression  # pandas and scipy: only nightly needs them

        wanted = name or NIGHTLY_SWEEP
        if wanted not in self.sweeps and wanted == NIGHTLY_SWEEP:
            return {}, None, f"{self.source} has no [sweeps.{wanted}]: running the [sweep] defaults"
        selection = self.named_sweep(wanted)
        threshold = selection.pop("threshold", None)
        if threshold is not None:
            try:
                threshold = regression.parse_threshold(str(threshold))
            except ValueError as exc:
                raise ConfigError(f"{self.source} [sweeps.{wanted}] threshold = {threshold!r}: {exc}") from None
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


def _read(path: Path) -> dict:
    """The TOML document at `path`, checked against the whole file's schema."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    return _validated(doc, str(path))


def _validated(doc: dict, source: str) -> dict:
    try:
        checked, renamed = schema.validate(doc)
    except SchemaError as exc:
        raise ConfigError(exc.message(source)) from None
    for where, old, new in renamed:
        log.warning("%s %s: %s is deprecated, call it %s", source, where, old, new)
    return checked


def _merge(base: object, over: object) -> object:
    """`over` on top of `base`, key by key at every depth of tables (anything else in `over` replaces)."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{key: _merge(base.get(key), value) for key, value in over.items()}}
    return over


def _combine(embedded: dict, user: dict, source: str) -> dict:
    """The user's file over the embedded default.

    * ``[models.*]`` extend the embedded catalog; an entry of the same name
      replaces the embedded one whole (``builtin_models = false``: start empty).
    * ``[devices.*]`` replace the embedded ``local`` device (a farm need not include this machine).
    * every other table merges key by key, nested tables too.
    * without a ``[sweep] models`` of the user's own, a file that defines models
      sweeps them and the entries pruned from them.
    """
    if user.get("builtin_models") is False and not user.get("models"):
        raise ConfigError(f"{source}: builtin_models = false needs at least one [models.NAME] of your own")
    doc = {k: v for k, v in embedded.items() if k not in ("models", "devices")}
    builtin = user.get("builtin_models", True)
    models = dict(embedded["models"]) if builtin else {}
    if not builtin:  # the embedded selections name embedded models
        doc["sweeps"] = {}
        doc["sweep"] = {k: v for k, v in doc["sweep"].items() if k != "models"}
    models.update(user.get("models", {}))
    doc["models"], doc["devices"] = models, user.get("devices", embedded["devices"])
    for key, value in user.items():
        if key not in ("models", "devices", "builtin_models"):
            doc[key] = _merge(doc.get(key), value)
    if "models" in user and "models" not in user.get("sweep", {}):
        mine = list(user["models"])
        derived = [n for n, m in models.items() if m.get("base") in mine and n not in mine]
        doc["sweep"] = {**doc.get("sweep", {}), "models": mine + derived}
    return doc


def _shipped_ratio_configs() -> set[str]:
    """Names of the ratio configs shipped in ``snp_core/configs`` (found without importing torch)."""
    spec = importlib.util.find_spec("snp_core")
    folders = spec.submodule_search_locations if spec else None
    return {p.stem for folder in folders or () for p in (Path(folder) / "configs").glob("*.json")}


def _build_models(tables: dict[str, dict], where: Callable[[str], str]) -> dict[str, ModelSpec]:
    """Model entries, pruned ones completed from their base; `where(name)` is ``file [models.NAME]``."""
    models = {name: ModelSpec(name=name, timm=t.get("timm", ""), **{k: v for k, v in t.items() if k != "timm"})
              for name, t in tables.items()}
    originals = [n for n, m in models.items() if m.base is None]
    configs = None
    for spec in models.values():
        if spec.base is None:
            extra = [k for k in schema.PRUNED_ONLY if k in tables[spec.name]]
            if extra:
                raise ConfigError(f"{where(spec.name)} {extra[0]}: only a pruned entry (one with base = ...) takes "
                                  f"it; add base = \"<the entry it is pruned from>\"")
            if not spec.timm:
                raise ConfigError(f"{where(spec.name)}: needs timm = \"<timm model name>\" (or base = ...)")
            continue
        if spec.base not in models or models[spec.base].base is not None:
            raise ConfigError(f"{where(spec.name)} base = {spec.base!r}: must name an unpruned model entry; "
                              f"known: {', '.join(originals)}")
        inherited = [k for k in schema.FROM_BASE if k in tables[spec.name]]
        if inherited:
            raise ConfigError(f"{where(spec.name)} {inherited[0]}: a pruned entry takes it from its base "
                              f"[models.{spec.base}]; set it there")
        if spec.plan is not None and spec.ratios is not None:
            raise ConfigError(f"{where(spec.name)}: give ratios or plan, not both (a plan already holds its widths)")
        base = models[spec.base]
        spec.timm, spec.weights, spec.kwargs = base.timm, base.weights, base.kwargs
        if spec.ratios is None and spec.plan is None:
            spec.ratios = "paper"
        if isinstance(spec.ratios, str) and spec.ratios != "paper":
            configs = _shipped_ratio_configs() if configs is None else configs
            if spec.ratios not in configs and not Path(spec.ratios).is_file():
                raise ConfigError(f"{where(spec.name)} ratios = {spec.ratios!r}: must be \"paper\", a shipped config "
                                  f"({', '.join(sorted(configs))}), a ratio file that exists, or a table "
                                  "{ qk = R, v = R, ffn = R, embed = R }")
    return models


def _check_selection(selection: dict, where: str, cfg_models: dict, devices: dict) -> dict:
    """Names in a ``[sweep]``/``[sweeps.NAME]`` selection must exist; ``batch_size`` becomes `SweepRequest.batch`."""
    for key, known, what in (("models", cfg_models, "model entry"), ("devices", devices, "device")):
        unknown = [n for n in selection.get(key, []) if n not in known]
        if unknown:
            raise ConfigError(f"{where} {key}: {unknown[0]!r} is not a {what}; known: {', '.join(known)}")
    out = dict(selection)
    if "batch_size" in out:
        out["batch"] = out.pop("batch_size")
    return out


def _store_location(raw: str | None, where: str, root: Path) -> Path | str:
    """``[paths] store``: a SQLite file (default ``ROOT/bench.sqlite``) or a PostgreSQL URL, kept as text."""
    if raw is None:
        return root / "bench.sqlite"
    if not store_backends.is_url(raw):
        return Path(raw)
    try:
        store_backends.check_url(raw, where)
    except store_backends.BackendError as exc:
        raise ConfigError(str(exc)) from None
    return raw


def load(path: Path | str | None = None, root: Path | str | None = None) -> Config:
    """The embedded default, overlaid with `path` (default ./bench.toml when it exists).

    The user's file is checked whole against `harness.schema.BENCH_TOML` before
    anything is built, so every error names that file. `root` (``--root``)
    overrides ``[paths] root``; the store and artifacts default to
    ``ROOT/bench.sqlite`` and ``ROOT/artifacts``, a local device's copies to
    ``ROOT/devices/NAME``. See `_combine` for how the two documents combine.
    """
    embedded = _validated(tomllib.loads(DEFAULT_CONFIG), EMBEDDED)
    if path is None and Path("bench.toml").is_file():
        path = Path("bench.toml")
    user = _read(Path(path)) if path is not None else {}
    source = str(path) if path is not None else EMBEDDED
    doc = _combine(embedded, user, source)

    def where(table: str, name: str | None = None) -> str:
        in_user = table in user and (name is None or name in user[table])
        return f"{source if in_user else EMBEDDED} [{table}{'.' + schema_key(name) if name else ''}]"

    models = _build_models(doc["models"], lambda name: where("models", name))
    paths = doc["paths"]
    out = Path(root if root is not None else paths["root"])
    try:
        devices = parse_devices(doc["devices"], source if "devices" in user else EMBEDDED, out)
    except DeviceConfigError as exc:
        raise ConfigError(str(exc)) from None
    sweep = _check_selection(doc.get("sweep", {}), where("sweep"), models, devices)
    sweeps = {name: _check_selection(table, where("sweeps", name), models, devices)
              for name, table in doc.get("sweeps", {}).items()}
    measure = dict(doc["measure"])
    quick_only = measure.pop("quick", {})
    quick = {**measure, **quick_only}  # the keys the quick profile does not name are [measure]'s
    store = _store_location(paths.get("store"), where("paths"), out)
    artifacts = Path(paths["artifacts"]) if "artifacts" in paths else out / "artifacts"
    return Config(models=models, devices=devices, sweep=sweep, measure=Measure(**measure), quick=Measure(**quick),
                  store=store, artifacts=artifacts, sweeps=sweeps, source=source, root=out)
