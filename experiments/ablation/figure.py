"""The ablation's figure: accuracy (pruned, fine-tuned) and attention cosine against the ratio removed.

Drawn in the project's one figure style (`results.style`: rcParams, canvas, PNG + PDF saving).
Colours here mean criteria, not models, so they do not come from `results.style.MODEL_COLORS`.
"""

from __future__ import annotations

from pathlib import Path

from results.style import SINGLE_COLUMN_IN, STYLE, new_figure, save_figure

from .tables import summarise

#: (colour, marker, line style) per criterion, so a criterion looks the same in every panel.
CRITERION_STYLE = {"snp": ("C0", "o", "-"), "snp*": ("C4", "D", "-"), "l2": ("C1", "s", "--"),
                   "random": ("C7", "^", ":"), "reverse": ("C3", "v", "-.")}
FIGURE_NAME = "accuracy_vs_ratio"


def figure(result: dict, out: Path) -> list[Path]:
    """One panel per measure the run has, one line per criterion; writes PNG and PDF into `out`."""
    import matplotlib

    with matplotlib.rc_context(STYLE):  # savefig reads rcParams too (dpi, PDF fonts): save inside
        return save_figure(_draw(result), out, FIGURE_NAME)


def _draw(result: dict):
    """The figure for `result`, drawn under `STYLE` (saved by the caller, still under it)."""
    summary = summarise(result["rows"])
    panels = [("acc_pruned", "test accuracy (%), no fine-tuning", 100.0),
              ("acc_finetuned", f"test accuracy (%), {result['settings']['finetune_steps']}-step fine-tune", 100.0),
              ("cosine", "attention-map cosine to original", 1.0),
              ("cosine_qk", "attention-map cosine, only Q/K pruned", 1.0)]
    panels = [p for p in panels if any(p[0] in s for s in summary)]
    fig = new_figure(SINGLE_COLUMN_IN * len(panels), SINGLE_COLUMN_IN)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    criteria = list(dict.fromkeys(s["criterion"] for s in summary))
    for ax, (key, title, scale) in zip(axes, panels):
        for crit in criteria:
            pts = sorted((s for s in summary if s["criterion"] == crit and key in s), key=lambda s: s["ratio"])
            color, marker, ls = CRITERION_STYLE.get(crit, ("k", "x", "-"))
            xs = [0.0] + [s["ratio"] * 100 for s in pts]
            start = result["unpruned"]["acc"] if key.startswith("acc") else 1.0
            ys = [start * scale] + [s[key] * scale for s in pts]
            err = [0.0] + [s.get(key + "_std", 0.0) * scale for s in pts]
            label = crit if crit != "snp*" else "snp* (best variant)"
            if crit == "random" and pts and pts[0]["n"] > 1:
                label += f" (mean ± sd, {pts[0]['n']} seeds)"
            ax.errorbar(xs, ys, yerr=err if any(err) else None, color=color, marker=marker, linestyle=ls,
                        label=label, capsize=2, markersize=4, linewidth=1.3)
        if key == "acc_pruned":
            ax.axhline(10.0, color="0.6", linewidth=0.8, linestyle=":")  # chance
            ax.set_ylim(0, 102)
        elif key == "acc_finetuned":  # all recover to near the original: zoom in
            ax.axhline(result["unpruned"]["acc"] * 100, color="0.4", linewidth=0.8, linestyle="--")
        ax.set_xlabel("Q/K pairs removed (%)" if key == "cosine_qk" else "Q/K, V, FFN neurons removed (%)")
        ax.set_title(title)
    axes[0].legend(loc="lower left")
    fig.suptitle(f"SNP criterion ablation: ViT ({result['train']['config']['depth']} blocks, "
                 f"dim {result['train']['config']['embed_dim']}) on 8×8 digits")
    return fig
