"""The one figure style of this project: rcParams, sizes, colours, markers, and saving PNG + PDF.

Every figure (the paper's figures in :mod:`results.figures`, the regression
report's in :mod:`results.report`, the experiments') is drawn inside
``matplotlib.rc_context(STYLE)`` on a ``Figure`` with its own Agg canvas (see
:func:`new_figure`), so nothing leaks into the caller's matplotlib state, and
written with :func:`save_figure`.

* ``STYLE``: fonts 6.5–8 pt (DejaVu Sans), thin axes, light grid, no top/right
  spines, frameless legends, TrueType fonts in PDFs (editable, accepted by
  publishers).
* ``DPI`` (200) for the PNGs; widths ``SINGLE_COLUMN_IN`` (3.3 in, one paper
  column) and ``DOUBLE_COLUMN_IN`` (7 in, two columns).
* Colour = timm model (:data:`MODEL_COLORS`, colour-blind-safe Okabe-Ito +
  tab10, a stable hash for unknown names, :func:`model_colors`); the original
  and its pruned variants share the colour and differ by marker
  (:data:`VARIANT_MARKERS`, circle = original) or hatching
  (:data:`VARIANT_HATCHES`).

Importing this module imports matplotlib's ``Figure`` and Agg canvas only (no
pyplot, no backend switch).
"""

from __future__ import annotations

import logging
import math
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

DPI = 200
SINGLE_COLUMN_IN = 3.3
DOUBLE_COLUMN_IN = 7.0

STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "legend.title_fontsize": 7, "figure.titlesize": 9,
    "axes.linewidth": 0.6, "xtick.major.width": 0.6, "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4, "ytick.minor.width": 0.4, "xtick.major.size": 3, "ytick.major.size": 3,
    "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.linewidth": 0.4, "grid.alpha": 0.5, "axes.axisbelow": True,
    "legend.frameon": False, "legend.handletextpad": 0.4, "legend.columnspacing": 1.0, "legend.borderpad": 0.2,
    "hatch.linewidth": 0.6, "savefig.dpi": DPI, "figure.dpi": 100,
    "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType in the PDF: editable text, accepted by publishers
}

# Colour-blind-safe (Okabe-Ito + tab10), fixed per timm model name so a model keeps its colour everywhere.
MODEL_COLORS: dict[str, str] = {
    "deit_tiny_patch16_224": "#0072B2",
    "deit_small_patch16_224": "#D55E00",
    "deit_base_patch16_224": "#009E73",
    "deit_tiny_distilled_patch16_224": "#56B4E9",
    "deit_small_distilled_patch16_224": "#E69F00",
    "deit_base_distilled_patch16_224": "#7BC8A4",
    "efficientformer_l1": "#CC79A7",
    "vit_base_patch16_224": "#6A3D9A",
}
FALLBACK_COLORS = ("#8C564B", "#BCBD22", "#17BECF", "#7F7F7F", "#1F77B4", "#FF7F0E", "#2CA02C", "#D62728",
                   "#9467BD", "#E377C2", "#F0E442", "#000000")
#: Marker of the original (index 0) and of the 1st, 2nd, ... pruned variant of a model (largest MACs first).
VARIANT_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">")
#: Hatching of the 1st, 2nd, ... pruned variant of a model in bar charts.
VARIANT_HATCHES = ("", "////", "\\\\\\\\", "xxxx", "....", "----", "++++", "oo")


def model_colors(models: Iterable[str]) -> dict[str, str]:
    """Colour of each timm model: the fixed palette, else a stable hash of the name (distinct within ``models``)."""
    colors: dict[str, str] = {}
    unknown = []
    for name in dict.fromkeys(models):
        if name in MODEL_COLORS:
            colors[name] = MODEL_COLORS[name]
        else:
            unknown.append(name)
    for name in sorted(unknown):
        start = zlib.crc32(name.encode()) % len(FALLBACK_COLORS)
        for i in range(len(FALLBACK_COLORS)):
            color = FALLBACK_COLORS[(start + i) % len(FALLBACK_COLORS)]
            if color not in colors.values():
                break
        colors[name] = color
    return colors


def new_figure(width: float, height: float, *, round_height: bool = True) -> Any:
    """A constrained-layout ``Figure`` on its own Agg canvas (no pyplot, no global backend switch).

    With `round_height` the height is rounded up to a whole 1/8 in (25 px at
    200 dpi, exact in binary), so the PNG is exactly ``figsize × DPI`` pixels.
    Create it inside ``matplotlib.rc_context(STYLE)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if round_height:
        height = math.ceil(height * 8 - 1e-9) / 8
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, out_dir: Path | str, stem: str, *, dpi: float = DPI,
                formats: Sequence[str] = ("png", "pdf"), creator: str = "snp-bench") -> list[Path]:
    """Write ``out_dir/stem.png`` (at `dpi`) and ``out_dir/stem.pdf`` (or the given `formats`); return the paths.

    fontTools' INFO logging of PDF font subsetting is silenced while saving.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fonttools = logging.getLogger("fontTools")  # PDF font subsetting logs every table at INFO
    level = fonttools.level
    fonttools.setLevel(max(level, logging.WARNING))
    try:
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            if fmt == "pdf":
                fig.savefig(path, metadata={"Creator": creator})
            else:
                fig.savefig(path, dpi=dpi)
            paths.append(path)
    finally:
        fonttools.setLevel(level)
    return paths


__all__ = ["DOUBLE_COLUMN_IN", "DPI", "FALLBACK_COLORS", "MODEL_COLORS", "SINGLE_COLUMN_IN", "STYLE",
           "VARIANT_HATCHES", "VARIANT_MARKERS", "model_colors", "new_figure", "save_figure"]
