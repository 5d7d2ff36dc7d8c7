"""Export records from the store to files other tools read: CSV, JSON Lines, Parquet.

* ``csv``: flat columns only, one row per record, for spreadsheets and quick
  looks.  Lists and dicts (runtime_options, input_shape, providers, warnings)
  are JSON strings; ``env`` and ``extra`` are left out (nested, large); the raw
  samples are left out unless ``include_samples=True`` adds ``samples_ns`` and
  ``sample_rounds`` columns holding JSON lists.
* ``jsonl``: one full record per line (samples, env and extra included): the
  lossless interchange format.
* ``parquet`` (pandas ``to_parquet``, needs pyarrow): every column;
  ``samples_ns``, ``sample_rounds``, ``input_shape``, ``providers``,
  ``warnings`` and ``validity`` as list columns, ``runtime_options``, ``env`` and ``extra`` as JSON strings (their
  keys differ between runtimes and devices, which a fixed Parquet struct type
  cannot hold).

Every format also carries, per record, the speedup columns of the reports:
``speedup`` (base median ÷ this median), ``speedup_low`` and ``speedup_high``
(its 95 % confidence interval, ``results.intervals.speedup_interval``) and
``validity`` (a list of ``"reason: detail"`` texts, ``results.intervals.validity``;
empty when the speedup can be trusted), for every ok pruned record that has a
base to compare with in its run (``results.speedup.pair_records``); None for
originals, error records and pruned records without a base.  CSV writes
``validity`` as a JSON list, like the other lists.  Computing them needs the
samples, so they are read even when the CSV leaves them out.

Files are written to a temporary name beside the target and renamed into
place, so a failed export never leaves a half-written file under the real name.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from results.records import JSON_FIELDS, RECORD_FIELDS, SAMPLE_FIELDS
from results.speedup import interval_fields, pair_indices
from results.store import Store, UnknownRunError

FORMATS = ("csv", "parquet", "jsonl")

#: The report columns added to every exported record (None where there is no speedup).
SPEEDUP_COLUMNS = ("speedup", "speedup_low", "speedup_high", "validity")
# Left out of CSV: too nested / large for a spreadsheet cell.
_CSV_EXCLUDED = frozenset({*SAMPLE_FIELDS, "env", "extra"})
CSV_COLUMNS: tuple[str, ...] = ("id", *(f for f in RECORD_FIELDS if f not in _CSV_EXCLUDED), "inserted",
                                *SPEEDUP_COLUMNS)
_CSV_JSON = JSON_FIELDS | {"validity"}
# Parquet keeps these as JSON text: heterogeneous dicts.
_PARQUET_JSON = ("runtime_options", "env", "extra")
_PARQUET_INTS = ("id", "batch_size", "macs", "params", "n", "rounds")


def _check_format(fmt: str) -> str:
    name = str(fmt).lower().lstrip(".")
    if name not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return name


def _json_cell(value: Any) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _write_atomically(out_path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``out_path``, then rename it into place."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)


def with_speedups(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records (of one or more runs, with samples) with :data:`SPEEDUP_COLUMNS` added; pairs within a run."""
    out = [{**r, **dict.fromkeys(SPEEDUP_COLUMNS)} for r in records]
    runs: dict[Any, list[int]] = {}
    for i, record in enumerate(records):
        runs.setdefault(record.get("run_id"), []).append(i)
    for positions in runs.values():
        part = [records[i] for i in positions]
        for i, j in pair_indices(part):
            fields = interval_fields(part[j], part[i])
            out[positions[i]].update({c: _none_for_nan(fields[c]) for c in SPEEDUP_COLUMNS})
    return out


def _none_for_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _write_csv(records: Iterable[dict[str, Any]], path: Path, include_samples: bool) -> None:
    columns = [*CSV_COLUMNS, *SAMPLE_FIELDS] if include_samples else list(CSV_COLUMNS)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({c: _json_cell(record.get(c)) if c in _CSV_JSON else record.get(c) for c in columns})


def _write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")


def _write_parquet(records: list[dict[str, Any]], path: Path) -> None:
    try:
        import pandas as pd
        import pyarrow  # noqa: F401  (pandas picks its engine; say clearly which one is missing)
    except ImportError as exc:
        raise ImportError(f"parquet export needs pandas and pyarrow ({exc}); pip install pandas pyarrow") from exc
    columns = ["id", *RECORD_FIELDS, "inserted", *SPEEDUP_COLUMNS]
    frame = pd.DataFrame.from_records(records, columns=columns)
    for column in ("speedup", "speedup_low", "speedup_high"):
        frame[column] = frame[column].astype("Float64")  # nullable: originals have none
    for column in _PARQUET_JSON:
        frame[column] = [None if v is None else _json_cell(v) for v in frame[column]]
    for column in _PARQUET_INTS:
        frame[column] = frame[column].astype("Int64")  # nullable: None stays null, not NaN in a float column
    frame.to_parquet(path, index=False)


def export(store: Store, run_id: str | None, fmt: str, out_path: Path | str, *,
           include_samples: bool = False) -> int:
    """Write the records of ``run_id`` (every run when None) to ``out_path`` as ``fmt``; return how many.

    ``include_samples`` matters for CSV only (jsonl and parquet always carry
    the samples and their rounds).  An unknown format raises ValueError naming the valid ones;
    an unknown run raises :class:`results.store.UnknownRunError`.
    """
    name = _check_format(fmt)
    if run_id is not None and store.get_run(run_id) is None:
        raise UnknownRunError(f"no run {run_id!r} in {store.path}")
    records = with_speedups(store.records(run_id=run_id))
    out = Path(out_path)
    if name == "csv":
        _write_atomically(out, lambda p: _write_csv(records, p, include_samples))
    elif name == "jsonl":
        _write_atomically(out, lambda p: _write_jsonl(records, p))
    else:
        _write_atomically(out, lambda p: _write_parquet(records, p))
    return len(records)
