"""The ablation's figures, in the project's one figure style (`results.style`: rcParams, canvas, PNG + PDF saving).

* ``accuracy_vs_ratio``: per benchmark (rows), accuracy before fine-tuning and attention cosine
  against the ratio removed, uniform and mixed pattern, and Q/K-only cosine; lines are means
  over seeds, bands their 95 % t-intervals.
* ``finetune_curves``: accuracy against fine-tune steps per criterion (mean, 95 % band).
* ``attention_maps_<benchmark>``: the paper's attention-map figure (its Fig. 3): the last
  block's attention map (mean over heads) of test images, rows = criteria, columns = ratios.

Colours here mean criteria, not models, so they do not come from `results.style.MODEL_COLORS`.
"""

from __future__ import annotations

from pathlib import Path

from results.style import SINGLE_COLUMN_IN, STYLE, new_figure, save_figure

from .stats import interval
from .tables import select, values

#: (colour, marker, line style) per criterion, so a criterion looks the same in every panel.
CRITERION_STYLE = {"snp": ("C0", "o", "-"), "snp_inverted": ("C9", "P", "-"), "snp_magnitude": ("C2", "D", "-"),
                   "snp_magnitude_inverted": ("C8", "X", "-"), "l2": ("C1", "s", "--"), "gm": ("C5", "p", "--"),
                   "random": ("C7", "^", ":"), "reverse": ("C3", "v", "-.")}
FIGURE_NAME, FINETUNE_FIGURE, MAPS_FIGURE = "accuracy_vs_ratio", "finetune_curves", "attention_maps_{}"


def figures(result: dict, out: Path) -> list[Path]:
    """Every figure the run has data for, PNG (+ PDF for the line plots) in `out`."""
    import matplotlib

    paths = []
    with matplotlib.rc_context(STYLE):  # savefig reads rcParams too (dpi, PDF fonts): save inside
        paths += save_figure(_ratio_figure(result), out, FIGURE_NAME)
        if result.get("finetune"):
            paths += save_figure(_finetune_figure(result), out, FINETUNE_FIGURE)
        for bench, grid in (result.get("attention_maps") or {}).items():
            paths += save_figure(_maps_figure(bench, grid, result["criteria"]), out, MAPS_FIGURE.format(bench),
                                 formats=("png",))
    return paths


def benchmarks(result: dict) -> list[str]:
    return list(dict.fromkeys(r["benchmark"] for r in result["rows"]))


def _line(ax, xs: list[float], groups: list[list[float]], crit: str, label: str) -> None:
    """Mean line with a shaded 95 % band (no band where a point has one seed)."""
    color, marker, ls = CRITERION_STYLE.get(crit, ("k", "x", "-"))
    stats = [interval(g) for g in groups]
    ax.plot(xs, [s.mean for s in stats], color=color, marker=marker, linestyle=ls, label=label, markersize=3.5,
            linewidth=1.2)
    if all(s.lo is not None for s in stats):
        ax.fill_between(xs, [s.lo for s in stats], [s.hi for s in stats], color=color, alpha=0.15, linewidth=0)


def _ratio_figure(result: dict):
    panels = [("uniform", "acc_pruned", "accuracy (%), uniform"), ("uniform", "cosine", "attention cosine, uniform"),
              ("mixed", "acc_pruned", "accuracy (%), paper's mixed pattern"),
              ("mixed", "cosine", "attention cosine, mixed pattern"),
              ("qk_only", "cosine", "attention cosine, only Q/K")]
    panels = [p for p in panels if select(result["rows"], pattern=p[0])]
    benches = benchmarks(result)
    fig = new_figure(SINGLE_COLUMN_IN * 0.8 * len(panels), SINGLE_COLUMN_IN * 0.85 * len(benches) + 0.4)
    axes = fig.subplots(len(benches), len(panels), squeeze=False)
    for row, bench in zip(axes, benches):
        unpruned = values(result["unpruned"], "acc", benchmark=bench)
        for ax, (pattern, key, title) in zip(row, panels):
            scale = 100.0 if key == "acc_pruned" else 1.0
            rows = select(result["rows"], benchmark=bench, pattern=pattern)
            ratios = sorted({r["ratio"] for r in rows})
            for crit in result["criteria"]:
                groups = [[v * scale for v in unpruned] if key == "acc_pruned" else [1.0] * len(unpruned)]
                groups += [[v * scale for v in values(rows, key, criterion=crit, ratio=q)] for q in ratios]
                _line(ax, [0.0] + [q * 100 for q in ratios], groups, crit, crit)
            if key == "acc_pruned":
                ax.axhline(10.0, color="0.6", linewidth=0.8, linestyle=":")  # chance
                ax.set_ylim(0, 102)
            ax.set_title(f"{bench}: {title}")
            ax.set_xlabel("Q/K pairs removed (%)" if pattern == "qk_only" else "mean neuron ratio removed (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels))
    fig.suptitle("Pruning criteria: accuracy before fine-tuning and attention fidelity "
                 "(mean, 95 % interval over seeds)")
    return fig


def _finetune_figure(result: dict):
    benches = list(dict.fromkeys(r["benchmark"] for r in result["finetune"]))
    fig = new_figure(SINGLE_COLUMN_IN * len(benches), SINGLE_COLUMN_IN)
    axes = fig.subplots(1, len(benches), squeeze=False)[0]
    for ax, bench in zip(axes, benches):
        rows = select(result["finetune"], benchmark=bench)
        steps = sorted({r["steps"] for r in rows})
        for crit in result["criteria"]:
            _line(ax, steps, [[v * 100 for v in values(rows, "acc", criterion=crit, steps=k)] for k in steps], crit,
                  crit)
        acc = interval(values(result["unpruned"], "acc", benchmark=bench)).mean
        ax.axhline(acc * 100, color="0.4", linewidth=0.8, linestyle="--")
        ax.set_ylim(0, 102)  # accuracy's range: a wide band at 0 steps would stretch the axis past 0 and 100
        ax.set_xlabel("fine-tune steps")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{bench}: {rows[0]['ratio']:.0%} uniform + residual, after fine-tuning")
    axes[0].legend(loc="lower right", fontsize=6)
    return fig


def _maps_figure(bench: str, grid: dict, criteria: list[str]):
    """Rows: criterion × image; columns: the image, then the map at each ratio (Q/K pairs removed)."""
    from matplotlib.colors import PowerNorm

    maps, images = grid["maps"], grid["images"]
    names = [c for c in criteria if c in maps]
    ratios = list(next(iter(maps.values())))
    n_img = len(images)
    cell = 0.62
    fig = new_figure(cell * (len(ratios) + 1) + 0.9, cell * len(names) * n_img + 0.6)
    axes = fig.subplots(len(names) * n_img, len(ratios) + 1, squeeze=False)
    for i, name in enumerate(names):
        for j in range(n_img):
            row = axes[i * n_img + j]
            row[0].imshow(images[j, 0].numpy(), cmap="gray")
            reference = maps[name][ratios[0]][j]
            norm = PowerNorm(0.5, vmin=0.0, vmax=float(reference.max()))
            for ax, ratio in zip(row[1:], ratios):
                ax.imshow(maps[name][ratio][j].numpy(), cmap="viridis", norm=norm, interpolation="nearest")
            row[0].set_ylabel(name if j == 0 else "", rotation=0, ha="right", va="center", fontsize=6)
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
    for ax, ratio in zip(axes[0][1:], ratios):
        ax.set_title(f"{ratio:.0%}", fontsize=6)
    axes[0][0].set_title("image", fontsize=6)
    fig.suptitle(f"{bench}: last block's attention map\n(mean over heads, {grid['tokens']}×{grid['tokens']}), "
                 "Q/K pairs removed", fontsize=7)
    return fig
