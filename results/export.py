"""Export records from the store to files other tools read: CSV, JSON Lines, Parquet.

* ``csv``: flat columns only, one row per record, for spreadsheets and quick
  looks.  Lists and dicts (runtime_options, input_shape, providers, warnings)
  are JSON strings; ``env`` and ``extra`` are left out (nested, large); the raw
  samples are left out unless ``include_samples=True`` adds a ``samples_ns``
  column holding a JSON list.
* ``jsonl``: one full record per line (samples, env and extra included): the
  lossless interchange format.
* ``parquet`` (pandas ``to_parquet``, needs pyarrow): every column;
  ``samples_ns``, ``input_shape``, ``providers`` and ``warnings`` as list
  columns, ``runtime_options``, ``env`` and ``extra`` as JSON strings (their
  keys differ between runtimes and devices, which a fixed Parquet struct type
  cannot hold).

Files are written to a temporary name beside the target and renamed into
place, so a failed export never leaves a half-written file under the real name.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from results.records import JSON_FIELDS, RECORD_FIELDS
from results.store import Store, UnknownRunError

FORMATS = ("csv", "parquet", "jsonl")

# Left out of CSV: too nested / large for a spreadsheet cell.
_CSV_EXCLUDED = frozenset({"samples_ns", "env", "extra"})
CSV_COLUMNS: tuple[str, ...] = ("id", *(f for f in RECORD_FIELDS if f not in _CSV_EXCLUDED), "inserted")
# Parquet keeps these as JSON text: heterogeneous dicts.
_PARQUET_JSON = ("runtime_options", "env", "extra")
_PARQUET_INTS = ("id", "batch_size", "macs", "params", "n")


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


def _write_csv(records: Iterable[dict[str, Any]], path: Path, include_samples: bool) -> None:
    columns = [*CSV_COLUMNS, "samples_ns"] if include_samples else list(CSV_COLUMNS)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({c: _json_cell(record.get(c)) if c in JSON_FIELDS else record.get(c) for c in columns})


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
    columns = ["id", *RECORD_FIELDS, "inserted"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    for column in _PARQUET_JSON:
        frame[column] = [None if v is None else _json_cell(v) for v in frame[column]]
    for column in _PARQUET_INTS:
        frame[column] = frame[column].astype("Int64")  # nullable: None stays null, not NaN in a float column
    frame.to_parquet(path, index=False)


def export(store: Store, run_id: str | None, fmt: str, out_path: Path | str, *,
           include_samples: bool = False) -> int:
    """Write the records of ``run_id`` (every run when None) to ``out_path`` as ``fmt``; return how many.

    ``include_samples`` matters for CSV only (jsonl and parquet always carry
    the samples).  An unknown format raises ValueError naming the valid ones;
    an unknown run raises :class:`results.store.UnknownRunError`.
    """
    name = _check_format(fmt)
    if run_id is not None and store.get_run(run_id) is None:
        raise UnknownRunError(f"no run {run_id!r} in {store.path}")
    records = store.records(run_id=run_id, with_samples=name != "csv" or include_samples)
    out = Path(out_path)
    if name == "csv":
        _write_atomically(out, lambda p: _write_csv(records, p, include_samples))
    elif name == "jsonl":
        _write_atomically(out, lambda p: _write_jsonl(records, p))
    else:
        _write_atomically(out, lambda p: _write_parquet(records, p))
    return len(records)
