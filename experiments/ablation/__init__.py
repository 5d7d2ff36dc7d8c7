"""Evidence that the SNP criterion works (docs/method.md §9.2): a pruning-criterion ablation on 8×8 digits.

A small timm ViT is trained on scikit-learn's ``load_digits`` (offline, minutes on a laptop
CPU; `training`), pruned at several uniform ratios with each criterion (``snp``, ``l2``,
``random`` over several seeds, ``reverse``) and measured three ways (`study`):

* test accuracy right after pruning (no fine-tuning);
* test accuracy after the same short fine-tune for every criterion;
* attention-map fidelity on held-out images (`fidelity`): cosine similarity and KL
  divergence between the original and the pruned model's attention maps
  ``softmax(q kᵀ · scale)``, per image, block and head, averaged. This is the quantitative
  form of the paper's qualitative attention-map ablation (ℓ2 / GM / Reverse / SNP).

It also scans SNP's open choices (γ as a count or an energy fraction, σ-weighting, mean or
median over images; docs/method.md §13.1–2) on attention fidelity at one ratio and adds the best
variant as an extra row, prunes each group kind alone, and compares whole-head criteria.
`report` writes README.md, results.json and the figure. Data (`data`): the 1797 digits,
upsampled to 32×32, a fixed stratified 70/30 split; 64 calibration images from a fixed
permutation. Trained weights are cached under ``runs/ablation/`` keyed by the training config.

``python -m bench ablation`` is the command line; `run_ablation` is its one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data import Digits, calibration_images, load_digits
from .fidelity import attention_fidelity, attention_maps, output_kl
from .report import write_outputs
from .study import CRITERIA, Progress, Settings, run_experiment
from .tables import results_table, summarise
from .training import MODEL_NAME, TrainConfig, train


@dataclass
class Outcome:
    """What a run produced: the results (as in results.json), the files written and the main table."""

    result: dict
    paths: list[Path]
    table: str

    @property
    def seconds(self) -> float:
        return self.result["seconds"]


def run_ablation(settings: Settings, out: Path, command: str, progress: Progress | None = None,
                 threads: int | None = None) -> Outcome:
    """Run the study with `settings` and write its outputs into `out`; `command` is quoted in the
    README as how it was produced. `progress` gets one line per step (default: logging);
    `threads`: torch CPU threads (None: torch's choice)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    result = run_experiment(settings, progress)
    paths = write_outputs(result, out, command)
    return Outcome(result, paths, results_table(summarise(result["rows"])))


__all__ = ["CRITERIA", "MODEL_NAME", "Digits", "Outcome", "Settings", "TrainConfig", "attention_fidelity",
           "attention_maps", "calibration_images", "load_digits", "output_kl", "results_table", "run_ablation",
           "summarise", "train", "write_outputs"]
