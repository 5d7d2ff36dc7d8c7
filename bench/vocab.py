"""The library's names and defaults that the commands' ``--help`` shows, copied so ``--help`` imports no torch.

Their sources (`snp_core`, `harness.target_latency`, `results.*`) import torch,
timm, scipy, pandas or matplotlib, seconds of work for a help text; every value
here is a copy of one of theirs, and ``tests/bench/test_cli_conventions.py``
holds each equal to its source (``SOURCES``), so a change there fails a test
instead of drifting. Nothing here is used to compute a result: the commands pass
the parsed values to the library, which checks them again.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: `snp_core.CRITERIA` (sorted names).
CRITERIA = ("gm", "l2", "random", "reverse", "snp", "snp_inverted", "snp_magnitude", "snp_magnitude_inverted")
#: `snp_core.HEAD_CRITERIA` (sorted names).
HEAD_CRITERIA = ("proj_l1", "qk_sum", "random")
#: `snp_core.ratios.KINDS`: the group kinds a ratio applies to.
KINDS = ("qk", "v", "ffn", "embed", "heads")
#: `snp_core.ratios.DEFAULT_PATTERN`.
DEFAULT_PATTERN = {"qk": 0.5, "v": 0.5, "ffn": 0.5, "embed": 0.2}
#: `harness.target_latency.PROFILE_FRACTIONS` and `TOLERANCE`.
PROFILE_FRACTIONS = (1.0, 0.8, 0.6, 0.45, 0.3)
LATENCY_TOLERANCE = 0.10
#: `results.regression.DEFAULT_THRESHOLD`, `DEFAULT_CONFIDENCE`, `DEFAULT_RESAMPLES`, `DEFAULT_SEED`.
REGRESSION_THRESHOLD = 0.05
CONFIDENCE = 0.95
RESAMPLES = 2000
BOOTSTRAP_SEED = 0
#: `results.export.FORMATS`: the file formats of ``bench results export``.
EXPORT_FORMATS = ("csv", "parquet", "jsonl")
#: `results.table.RENDERERS`, `DEFAULT_CV_THRESHOLD`; `results.intervals.DEFAULT_MAX_WIDTH`.
TABLE_RENDERERS = ("md", "latex", "csv", "html")
CV_THRESHOLD = 0.05
MAX_WIDTH = 0.10
#: `results.figures.FIGURES` (names, in order).
FIGURES = ("latency_vs_params", "accuracy_vs_latency", "speedup", "latency_distribution")
#: The fields of `snp_core.finetune.Recipe` that ``bench finetune`` / ``evaluate`` show as defaults.
RECIPE = {
    "epochs": 300, "batch_size": 256, "base_lr": 2.5e-4, "min_lr": 1e-5, "warmup_epochs": 0, "warmup_lr": 1e-6,
    "weight_decay": 0.05, "drop_path": 0.1, "mixup": 0.8, "cutmix": 1.0, "smoothing": 0.1, "crop_pct": 0.875,
    "model_ema_decay": 0.99996, "distill_alpha": 0.5, "distill_tau": 1.0, "workers": 4, "seed": 0,
}

#: Where each copy comes from: name here -> (module, expression over it), for the test that holds them equal.
SOURCES = {
    "CRITERIA": ("snp_core", "tuple(sorted(m.CRITERIA))"),
    "HEAD_CRITERIA": ("snp_core", "tuple(sorted(m.HEAD_CRITERIA))"),
    "KINDS": ("snp_core.ratios", "tuple(m.KINDS)"),
    "DEFAULT_PATTERN": ("snp_core.ratios", "dict(m.DEFAULT_PATTERN)"),
    "PROFILE_FRACTIONS": ("harness.target_latency", "tuple(m.PROFILE_FRACTIONS)"),
    "LATENCY_TOLERANCE": ("harness.target_latency", "m.TOLERANCE"),
    "REGRESSION_THRESHOLD": ("results.regression", "m.DEFAULT_THRESHOLD"),
    "CONFIDENCE": ("results.regression", "m.DEFAULT_CONFIDENCE"),
    "RESAMPLES": ("results.regression", "m.DEFAULT_RESAMPLES"),
    "BOOTSTRAP_SEED": ("results.regression", "m.DEFAULT_SEED"),
    "EXPORT_FORMATS": ("results.export", "tuple(m.FORMATS)"),
    "TABLE_RENDERERS": ("results.table", "tuple(m.RENDERERS)"),
    "CV_THRESHOLD": ("results.table", "m.DEFAULT_CV_THRESHOLD"),
    "MAX_WIDTH": ("results.intervals", "m.DEFAULT_MAX_WIDTH"),
    "FIGURES": ("results.figures", "tuple(m.FIGURES)"),
    "RECIPE": ("snp_core.finetune", "{k: getattr(m.Recipe(), k) for k in RECIPE}"),
}


def ratio_configs() -> list[str]:
    """`snp_core.ratios.config_names()`, read from the package folder without running the package's imports."""
    spec = importlib.util.find_spec("snp_core")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "configs"
    return sorted(p.stem for p in folder.glob("*.json"))
