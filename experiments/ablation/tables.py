"""The ablation's numbers as markdown tables: means with 95 % intervals over seeds, and paired differences.

Every table goes through `results.markdown.markdown_table`, the project's one table writer;
this module only decides rows, columns and number formats. A cell is ``mean [lo, hi]`` (the
95 % t-interval over training seeds, `stats.interval`; a bare mean with one seed). A
difference column holds the paired per-seed difference to a reference criterion
(`stats.paired`) and a mark when the interval excludes 0: ▲ higher, ▼ lower.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from results.markdown import markdown_table

from .stats import Interval, interval, paired

#: Marks of a called difference (interval above / below 0) and of no call.
MARKS = {1: " ▲", -1: " ▼", 0: ""}
#: (key, column title, scale, digits) of the measures the tables show.
ACC = ("acc_pruned", "test acc. pruned (%)", 100.0, 1)
COSINE = ("cosine", "attention cosine ↑", 1.0, 3)
KL = ("kl", "attention KL ↓", 1.0, 3)


def select(rows: Iterable[dict], **match: object) -> list[dict]:
    """The rows whose fields equal `match`."""
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def per_seed(rows: Iterable[dict], key: str, **match: object) -> dict[int, float]:
    """seed → `key` of the rows matching `match` (one row per seed)."""
    return {r["seed"]: r[key] for r in select(rows, **match) if key in r}


def values(rows: Iterable[dict], key: str, **match: object) -> list[float]:
    return list(per_seed(rows, key, **match).values())


def difference(rows: Sequence[dict], key: str, name: str, reference: str, field: str = "criterion",
               **match: object) -> Interval | None:
    """Paired interval of `key` of `name` minus `reference` (the `field` of the rows) over seeds."""
    return paired(per_seed(rows, key, **match, **{field: name}), per_seed(rows, key, **match, **{field: reference}))


def cell(rows: Sequence[dict], key: str, scale: float, digits: int, **match: object) -> str:
    vals = values(rows, key, **match)
    return interval(vals).text(scale, digits).replace("-", "−") if vals else "–"


def diff_cell(d: Interval | None, scale: float, digits: int) -> str:
    if d is None:
        return "–"
    return d.text(scale, digits).replace("-", "−") + MARKS[d.sign()]


def comparison_table(rows: Sequence[dict], criteria: Sequence[str], split: Sequence[str],
                     measures: Sequence[tuple], references: Sequence[str] = ("l2", "snp"),
                     field: str = "criterion") -> str:
    """One line per value of the `split` fields (in first-seen order) × criterion: each measure's
    interval and its paired difference to each reference (the reference itself: –)."""
    header = [*split, field.replace("_", " ")]
    for _, title, _, _ in measures:
        header += [title, *(f"Δ vs {ref}" for ref in references)]
    lines = []
    for combo in dict.fromkeys(tuple(r[k] for k in split) for r in rows):
        match = dict(zip(split, combo))
        for name in criteria:
            if not select(rows, **match, **{field: name}):
                continue
            line = [_fmt(k, v) for k, v in match.items()] + [name]
            for key, _, scale, digits in measures:
                line.append(cell(rows, key, scale, digits, **match, **{field: name}))
                line += ["–" if name == ref else diff_cell(difference(rows, key, name, ref, field, **match), scale,
                                                          digits) for ref in references]
            lines.append(line)
    return markdown_table(header, lines)


def _fmt(key: str, value: object) -> str:
    return f"{value:.0%}" if key == "ratio" and isinstance(value, float) else str(value)


def finetune_table(rows: Sequence[dict], criteria: Sequence[str], reference: str = "l2") -> str:
    """Test accuracy (%) per criterion after each number of fine-tune steps; mark: paired vs `reference`."""
    steps = sorted({r["steps"] for r in rows})
    header = ["criterion", *(f"{k} steps" for k in steps)]
    lines = []
    for name in criteria:
        if not select(rows, criterion=name):
            continue
        line = [name]
        for k in steps:
            text = cell(rows, "acc", 100.0, 1, criterion=name, steps=k)
            d = None if name == reference else difference(rows, "acc", name, reference, steps=k)
            line.append(text + (MARKS[d.sign()] if d is not None else ""))
        lines.append(line)
    return markdown_table(header, lines)


def variants_table(rows: Sequence[dict]) -> str:
    """SNP's open choices on Q/K-only pruning, best mean attention cosine first, with intervals over seeds."""
    header = ["γ", "weighting", "aggregate", "attention cosine ↑", "attention KL ↓", "test acc. pruned (%)"]
    combos = list(dict.fromkeys((r["gamma"], r["weighting"], r["aggregate"]) for r in rows))

    def mean_cosine(c: tuple) -> float:
        return interval(values(rows, "cosine", gamma=c[0], weighting=c[1], aggregate=c[2])).mean

    lines = []
    for g, w, a in sorted(combos, key=mean_cosine, reverse=True):
        m = {"gamma": g, "weighting": w, "aggregate": a}
        lines.append([g, w, a, cell(rows, "cosine", 1.0, 4, **m), cell(rows, "kl", 1.0, 4, **m),
                      cell(rows, "acc_pruned", 100.0, 1, **m)])
    return markdown_table(header, lines)


def heads_table(rows: Sequence[dict]) -> str:
    """One line per (ratio, head criterion): accuracy and output KL, with paired differences to proj_l1."""
    return comparison_table(rows, list(dict.fromkeys(r["head_criterion"] for r in rows)), ["ratio"],
                            [ACC, ("output_kl", "output KL ↓", 1.0, 3)], references=("proj_l1",),
                            field="head_criterion")
