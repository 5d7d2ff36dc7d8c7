"""The schema of ``bench.toml``: every table and key the tool reads, what each accepts.

One place, read by `harness.config.load` before it builds anything: a misspelt
key or table, a value of the wrong type or out of range is refused with one
line naming the file, the key's path and what is accepted (`formats.schema`).
``[devices.NAME]`` is the device layer's own table, `devices.config.DEVICE`.

Top level::

    builtin_models = true      # false: start from an empty model catalog (only your [models.*])
    [paths]                    root (outputs root), store, artifacts
    [models.NAME]              a model entry (MODEL below)
    [devices.NAME]             a device (devices.config)
    [sweep]                    the default selection of `bench sweep`
    [sweeps.NAME]              named selections: `bench sweep --sweep NAME`, `bench nightly`
    [measure], [measure.quick] how models are timed (harness.config.Measure)
"""

from __future__ import annotations

import formats
from devices.config import DEVICE, NAME as DEVICE_NAME
from formats.schema import AnyTable, Bool, Either, Int, ListOf, MapOf, Number, Str, Table, toml_key

#: Importance criteria `snp_core.CRITERIA` knows (tests/harness/test_config.py holds the two lists together:
#: importing snp_core here would cost every command torch's import time).
CRITERIA = ("snp", "l2", "random", "reverse", "gm", "snp_inverted", "snp_magnitude", "snp_magnitude_inverted")
#: Ratio kinds of a uniform ``ratios = { ... }`` table (`snp_core.groups.KINDS`, also held together by a test).
RATIO_KINDS = ("qk", "v", "ffn", "embed", "heads")

_NAMES = ListOf(Str(nonempty=True), nonempty=True)
_FRACTION = Number(min=0, max=1)
_MODEL_NAME = Str(pattern=r"[^|\s](?:[^|]*[^|\s])?",
                  rule="non-empty, without '|' (it separates the fields of a job key) or surrounding spaces")


#: Old key names met by the check in progress (`validate` collects them; config is read in one thread).
_renames: list[tuple[str, str, str]] = []


def _renamed(path: tuple[str, ...], old: str, new: str) -> None:
    _renames.append(("[" + ".".join(toml_key(k) for k in path) + "]", old, new))


MODEL = Table({
    "timm": Str(nonempty=True), "weights": Str(nonempty=True), "kwargs": AnyTable(), "label": Str(),
    "base": Str(nonempty=True),
    "ratios": Either((Str(nonempty=True), Table({kind: Number(min=0, max=1) for kind in RATIO_KINDS}))),
    "criterion": Str(choices=CRITERIA), "round_to": Int(min=1), "calib": Str(nonempty=True),
    "num_calib": Int(min=1), "plan": Str(nonempty=True), "top1": Number(min=0, max=100),
}, header=True)
#: Keys only a pruned entry (one with ``base``) may have, and keys it takes from its base instead.
PRUNED_ONLY = ("ratios", "criterion", "round_to", "calib", "num_calib", "plan")
FROM_BASE = ("timm", "weights", "kwargs")

#: ``bench sweep``'s selection keys (``[sweep]`` and every ``[sweeps.NAME]``).
_SELECTION = {
    "devices": _NAMES, "models": _NAMES, "formats": ListOf(Str(choices=tuple(formats.FORMATS)), nonempty=True),
    "batch_size": ListOf(Int(min=1), nonempty=True), "quick": Bool(),
}
SWEEP = Table(_SELECTION, header=True, renamed={"batch": "batch_size"}, on_renamed=_renamed)
NAMED_SWEEP = Table({**_SELECTION, "threshold": Either((Number(min=0, above=True), Str(nonempty=True)))},
                    header=True, renamed={"batch": "batch_size"}, on_renamed=_renamed)

#: ``[measure]`` keys (see harness.config.Measure for what each means).
_MEASURE_KEYS = {
    "warmup_iterations": Int(min=0), "iterations": Int(min=1), "min_seconds": Number(min=0),
    "timeout_s": Number(min=1), "grace_s": Number(min=0), "rounds": Int(min=1), "rewarm_iterations": Int(min=0),
    "isolate": Bool(), "cold_start": Bool(), "seed": Int(), "cooldown_temp_c": Number(min=0, max=150),
    "cooldown_max_wait_s": Number(min=0),
}
MEASURE = Table({**_MEASURE_KEYS, "quick": Table(_MEASURE_KEYS, header=True)}, header=True)

PATHS = Table({"root": Str(nonempty=True), "store": Str(nonempty=True), "artifacts": Str(nonempty=True)},
              header=True)

#: The whole file.
BENCH_TOML = Table({
    "builtin_models": Bool(),
    "paths": PATHS,
    "models": MapOf(MODEL, name=_MODEL_NAME),
    "devices": MapOf(DEVICE, name=DEVICE_NAME),
    "sweep": SWEEP,
    "sweeps": MapOf(NAMED_SWEEP, name=Str(pattern=r"[A-Za-z0-9_-]+", rule="letters, digits, '_' and '-'")),
    "measure": MEASURE,
})


def validate(doc: dict) -> tuple[dict, list[tuple[str, str, str]]]:
    """``(doc checked against BENCH_TOML, [(table, old key, new key) of deprecated names used])``.

    Raises `formats.schema.SchemaError`; the caller names the file.
    """
    _renames.clear()
    try:
        return BENCH_TOML.check(doc), list(_renames)
    finally:
        _renames.clear()
