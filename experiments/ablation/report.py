"""The ablation's outputs: results.json, the figure and README.md (docs/ablation/ on a full run).

The README is generated from the numbers, so it never claims what the run did not show
(`conclusions`); only a hand-written ``## Discussion`` section at its end survives a rerun.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .figure import FIGURE_NAME, figure
from .study import snp_defaults
from .tables import heads_table, ordering_table, per_kind_table, results_table, summarise, variants_table

#: The heading of the hand-written section `write_outputs` keeps.
DISCUSSION = "\n## Discussion"
README_FILE, RESULTS_FILE = "README.md", "results.json"


def write_outputs(result: dict, out: Path, command: str) -> list[Path]:
    """Write results.json, the figure and README.md into `out`. A hand-written ``## Discussion``
    section at the end of an existing README.md is kept (the rest of the README is generated)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(result, indent=2) + "\n")
    paths = figure(result, out)
    text = readme(result, command)
    old = (out / README_FILE).read_text() if (out / README_FILE).is_file() else ""
    if DISCUSSION in old:
        text = text.rstrip("\n") + "\n" + old[old.index(DISCUSSION):]
    (out / README_FILE).write_text(text)
    return [out / README_FILE, out / RESULTS_FILE, *paths]


def conclusions(result: dict) -> str:
    """Plain statements computed from the numbers: per ratio and measure, does snp beat l2, random, reverse?"""
    summary = summarise(result["rows"])
    lines = []
    for ratio in sorted({s["ratio"] for s in summary}):
        at = {s["criterion"]: s for s in summary if s["ratio"] == ratio}
        if "snp" not in at:
            continue
        others = [c for c in ("l2", "random", "reverse") if c in at]
        for key, what in (("cosine", "attention cosine"), ("cosine_qk", "attention cosine with only Q/K pruned"),
                          ("acc_pruned", "accuracy before fine-tuning"),
                          ("acc_finetuned", "accuracy after fine-tuning")):
            if key not in at["snp"]:
                continue
            scale = 1.0 if key.startswith("cosine") else 100.0
            beaten = [c for c in others if at[c][key] > at["snp"][key]]
            vals = ", ".join(f"{c} {at[c][key] * scale:.3g}" for c in others)
            verdict = "best of the four" if not beaten else f"beaten by {', '.join(beaten)}"
            lines.append(f"* {ratio:.0%} removed, {what}: snp {at['snp'][key] * scale:.3g} ({vals}): snp is {verdict}.")
    lines += head_conclusions(result.get("heads") or [])
    return "\n".join(lines)


def head_conclusions(rows: list[dict]) -> list[str]:
    """Which head criterion kept the predictions closest (lowest output KL; random: its seed mean)."""
    lines = []
    for ratio in dict.fromkeys(r["ratio"] for r in rows):
        kl: dict[str, list[float]] = {}
        for r in rows:
            if r["ratio"] == ratio:
                kl.setdefault(r["head_criterion"], []).append(r["output_kl"])
        mean = {name: statistics.mean(v) for name, v in kl.items()}
        order = sorted(mean, key=mean.get)
        lines.append(f"* {ratio:.0%} of heads removed, output KL (lower is better): "
                     + ", ".join(f"{n} {mean[n]:.4f}" for n in order) + f": {order[0]} is best.")
    return lines


def readme(result: dict, command: str) -> str:
    """The generated README.md: how it was produced, what was measured, every table, the conclusions."""
    summary = summarise(result["rows"])
    cfg, st = result["train"]["config"], result["settings"]
    best = result["best_variant"]
    default = snp_defaults()
    return f"""# Does the SNP criterion work? An attention-fidelity and accuracy ablation

Produced by:

```bash
{command}
```

({result['seconds']:.0f} s on this machine, {'the trained weights came from the cache' if result['train'].get('from_cache') else 'training included'}.)

![accuracy and attention fidelity vs pruning ratio]({FIGURE_NAME}.png)

## What was measured

* **Model**: timm `{result['train']['model']}` architecture shrunk with `img_size={cfg['img_size']}`,
  `patch_size={cfg['patch_size']}`, `depth={cfg['depth']}`, `num_heads={cfg['num_heads']}`,
  `embed_dim={cfg['embed_dim']}`, `num_classes=10` ({cfg['img_size'] // cfg['patch_size']}² + 1 = \
{(cfg['img_size'] // cfg['patch_size']) ** 2 + 1} tokens, head width {cfg['embed_dim'] // cfg['num_heads']}).
* **Data**: scikit-learn `load_digits` (1797 8×8 images), scaled to [0, 1], bilinearly upsampled to
  {cfg['img_size']}×{cfg['img_size']}, 3 channels, normalised (mean = std = 0.5); stratified split
  `train_test_split(test_size=0.3, stratify=y, random_state=0)` = 1257 train / 540 test.
* **Training**: {cfg['epochs']} epochs, batch {cfg['batch_size']}, AdamW (`timm.optim.create_optimizer_v2`,
  lr {cfg['lr']}, weight decay {cfg['weight_decay']}), per-step cosine schedule with {cfg['warmup_epochs']} warm-up
  epochs (`timm.scheduler.create_scheduler_v2`), random ±2 px shifts, label smoothing 0.1.
  Test accuracy **{result['train']['test_accuracy'] * 100:.1f} %** (train {result['train']['train_accuracy'] * 100:.1f} %),
  trained in {result['train']['train_seconds']:.0f} s on 2 CPU cores; cached in `runs/ablation/<config hash>/`.
* **Pruning**: uniform ratios, the same fraction of Q/K pairs (per head), V neurons (per head) and FFN
  hidden neurons removed in every block; residual stream {'not pruned' if not st['embed'] else f"{st['embed']:.0%} removed"}.
  Calibration: {st['num_calib']} fixed training images (used by `snp`, `reverse`, `snp*`).
  `snp` uses the defaults γ = {default['gamma']}, weighting = {default['weighting']}, aggregate = {default['aggregate']}.
  `random` is averaged over seeds {', '.join(map(str, st['random_seeds']))} (mean ± sd).
* **Accuracy**: test accuracy right after pruning, and after the same fine-tune for every criterion
  ({st['finetune_steps']} AdamW steps, batch {cfg['batch_size']}, lr {st['finetune_lr']} cosine, same data order).
* **Attention fidelity** (docs/method.md §9.2, the paper's attention-map ablation, measured before fine-tuning):
  for all 540 test images, every block and head, the attention map `softmax(q kᵀ · scale)` of the
  original and of the pruned model (the pruned model's own q/k, from `PrunedAttention.project`);
  **cosine** = cosine similarity of the flattened N×N maps, **KL** = KL(original ‖ pruned) per query
  row; both averaged over rows, heads, blocks and images. **Q/K-only** columns: the same criterion
  pruning only the Q/K pairs (V, FFN and residual stream untouched), which isolates the part of the
  criterion the attention-map ablation is about (with V/FFN pruned too, later blocks' maps also move
  because their inputs change). Unpruned: cosine {result['unpruned']['cosine']:.4f},
  KL {result['unpruned']['kl']:.4f}.

Unpruned model: test accuracy {result['unpruned']['acc'] * 100:.1f} %.

## Results

{results_table(summary)}

Ordering (best first) per ratio:

{ordering_table(summary)}

## SNP's open choices (docs/method.md §13.1–2), attention fidelity at {st['variant_ratio']:.0%}

γ: an int is a fixed number of singular components, a float an energy fraction of Σσ²;
weighting `sigma` weights component j by σ_j/Σσ; aggregate = over the {st['num_calib']} calibration images.
These choices change only the Q/K pair scores, so each variant prunes only the Q/K pairs
({st['variant_ratio']:.0%} per head); sorted by attention cosine (no fine-tuning); accuracy is of that Q/K-only model.

{variants_table(result['variants']) if result['variants'] else '(not run)'}

Best: γ = {best['gamma'] if best else '–'}, weighting = {best['weighting'] if best else '–'}, \
aggregate = {best['aggregate'] if best else '–'}{' (the row `snp*` above)' if any(r['criterion'] == 'snp*' for r in result['rows']) else ' (the default: no extra row)'}.

## Each group kind alone, {st['variant_ratio']:.0%} removed (no fine-tune)

Which part of each criterion helps or hurts: only the Q/K pairs, only the V neurons or only the
FFN hidden neurons are pruned (SNP: Q/K = attention-score criterion, V and FFN = redundancy
criterion; reverse = both inverted; random: seed 0).

{per_kind_table(result.get('per_kind') or [])}

## Whole-head pruning: which head criterion? (docs/method.md §6)

Only whole heads are removed (the same fraction in every block; no neuron pruning), ranked by
`proj_l1` (L1 norm of the head's output-projection columns), `qk_sum` (sum of the head's SNP Q/K
pair scores on the calibration images) or `random`. Removed heads have no attention map, so
fidelity is the KL divergence between the original and the pruned model's class distributions
on the test set; accuracy before and after the same fine-tune as above.

{heads_table(result.get('heads') or [])}

## Conclusions

{conclusions(result)}
"""
