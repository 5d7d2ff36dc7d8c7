"""What the ablation runs: its settings, the pruning sweeps and comparisons, and their results.

Every pruned model comes from the library's own path (`snp_core.score_groups`,
`snp_core.make_plan`, `snp_core.prune`, ratios checked by `snp_core.ratios.validate`), so the
study measures exactly what ``bench compress`` would produce. Each (benchmark, training seed)
is one `Subject`; a criterion scores a subject once and that score is cut at every ratio
(``make_plan(scores=...)``), as a ratio search would. Results are plain dicts (one per
measured model, each naming its benchmark and seed) so that they go to ``results.json`` as
they are; `stats` turns them into intervals over seeds.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

import snp_core
from snp_core import ratios as ratio_sources

from .data import ImageSet, calibration_images, load
from .fidelity import attention_maps, fidelity_to, output_kl
from .training import BENCHMARKS, MODEL_NAME, TrainConfig, accuracy, fit, train

log = logging.getLogger(__name__)

#: Pruning criteria compared, in report order: the faithful SNP, its variants (V/FFN redundancy
#: ranking inverted; magnitude-aware), the paper's ablation baselines (ℓ2, geometric median,
#: random, reverse = SNP inverted). Names missing from `snp_core.CRITERIA` are skipped (`available`).
CRITERIA = ("snp", "snp_inverted", "snp_magnitude", "snp_magnitude_inverted", "l2", "gm", "random", "reverse")
#: The references every criterion is compared with, seed by seed.
REFERENCES = ("l2", "snp")
#: SNP variants that may be named the better criterion (`report.better_criterion`).
VARIANTS = ("snp_inverted", "snp_magnitude", "snp_magnitude_inverted")
#: Ratio patterns of the full-model rows (`ratios_for`).
PATTERNS = ("uniform", "mixed")
#: Group kinds pruned one at a time by `per_kind`.
KINDS = ("qk", "v", "ffn", "embed")
#: No group of a scaled pattern loses more than this (the library's budget scaling uses the same cap).
MAX_RATIO = 0.95

#: Receives one human-readable line per step of the study (the command prints them).
Progress = Callable[[str], None]


def available(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` that `snp_core` knows (so the study runs before and after a criterion lands)."""
    return tuple(n for n in names if n in snp_core.CRITERIA)


@dataclass
class Settings:
    """What one ablation run does (recorded as ``settings`` in results.json)."""

    benchmarks: tuple[TrainConfig, ...] = (BENCHMARKS["digits"], BENCHMARKS["mnist"])
    seeds: tuple[int, ...] = (0, 1, 2)
    criteria: tuple[str, ...] = CRITERIA
    ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7)
    patterns: tuple[str, ...] = PATTERNS
    embed: float | None = None
    num_calib: int = 64
    num_fidelity: int = 256
    kinds_ratio: float = 0.5  # 0: no per-kind rows
    variant_gammas: tuple[int | float, ...] = (0.5, 0.9, 0.99, 1, 2, 4, 8)
    head_ratios: tuple[float, ...] = (0.25, 0.5)
    finetune_ratio: float = 0.5
    finetune_steps: tuple[int, ...] = (10, 25, 50)
    finetune_lr: float = 5e-4
    map_ratios: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    map_images: int = 2
    cache: Path = Path("runs/ablation")

    @classmethod
    def quick(cls, cache: Path = Path("runs/ablation")) -> Settings:
        """A smoke test in a few minutes: digits only (4 blocks, 15 epochs), one seed, ratio 0.5, a 10-step
        fine-tune curve, half the heads, maps at 0/50/90 % of one image; no per-kind rows, no SNP scan."""
        small = dataclasses.replace(BENCHMARKS["digits"], depth=4, epochs=15)
        return cls(benchmarks=(small,), seeds=(0,),
                   ratios=(0.5,), kinds_ratio=0.0, variant_gammas=(), head_ratios=(0.5,), finetune_steps=(5, 10),
                   num_fidelity=64, map_ratios=(0.0, 0.5, 0.9), map_images=1, cache=cache)

    def to_dict(self) -> dict:
        """JSON-ready: tuples as lists, paths as strings."""
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class Subject:
    """One trained model of one benchmark and seed, with what every criterion is measured on."""

    config: TrainConfig
    model: nn.Module
    data: ImageSet
    calib: torch.Tensor
    x_fidelity: torch.Tensor
    reference: list[torch.Tensor]  # the original's attention maps on x_fidelity, per block
    info: dict
    scores: dict[str, dict] = field(default_factory=dict)

    @property
    def key(self) -> dict:
        return {"benchmark": self.config.data, "seed": self.config.seed}

    def groups(self) -> list:
        return snp_core.adapter_for(self.model, MODEL_NAME).groups()


def subject(config: TrainConfig, settings: Settings, progress: Progress) -> Subject:
    """Train (or load) `config`'s model and fix its calibration and fidelity images (seeded by its seed)."""
    data = load(config.data, config.img_size)
    model, info = train(config, data, settings.cache, progress)
    x_fid = data.x_test[:settings.num_fidelity]
    return Subject(config, model, data, calibration_images(data, settings.num_calib, seed=config.seed), x_fid,
                   attention_maps(model, x_fid), info)


def criterion(name: str, seed: int, **params: object) -> snp_core.Importance:
    """Criterion `name`; ``random`` draws with the subject's seed, SNP variants take `params` (γ, ...)."""
    return snp_core.criterion_from_options(name, seed=seed, **params)


def scores_of(s: Subject, name: str) -> dict:
    """`name`'s neuron scores of the subject's model, computed once (calibration on `s.calib`)."""
    if name not in s.scores:
        adapter = snp_core.adapter_for(s.model, MODEL_NAME)
        s.scores[name] = snp_core.score_groups(s.model, adapter, criterion(name, s.config.seed), s.calib)
    return s.scores[name]


def paper_pattern(groups: list, depth: int) -> dict[str, float]:
    """The paper's DeiT-T ratios (``ratios.resolve("paper", ...)``, 12 blocks) mapped onto `depth` blocks:
    block b takes the paper's block ``round(b · 11 / (depth - 1))``, per kind; the residual stream
    keeps the paper's ratio; whole heads are not pruned."""
    paper = ratio_sources.resolve("paper", MODEL_NAME)
    paper_depth = 1 + max(int(name.split(".")[1]) for name in paper if name.startswith("blocks."))
    out = {}
    for g in groups:
        if g.kind in ("qk", "v", "ffn"):
            block = int(g.name.split(".")[1])
            source = round(block * (paper_depth - 1) / (depth - 1)) if depth > 1 else 0
            out[g.name] = paper[f"blocks.{source}.{g.kind}"]
        elif g.kind == "embed":
            out[g.name] = paper["embed"]
    return out


def _neuron_mean(ratios: Mapping[str, float], groups: list) -> float:
    values = [ratios.get(g.name, 0.0) for g in groups if g.kind in ("qk", "v", "ffn")]
    return sum(values) / len(values)


def ratios_for(s: Subject, pattern: str, ratio: float, embed: float | None = None) -> dict[str, float]:
    """Per-group ratios of a full-model row with mean neuron ratio `ratio` (before the cap).

    ``uniform``: `ratio` of every Q/K, V and FFN group. ``mixed``: the paper's per-layer pattern
    (`paper_pattern`) scaled by one factor so that its mean over the Q/K, V and FFN groups is
    `ratio`, each capped at `MAX_RATIO` (the library's budget scaling, `ratios.scale_to_target`,
    keeps a pattern's shape the same way). Both prune the residual stream by the paper's
    proportion: embed = `ratio` · (paper embed ratio / paper mean neuron ratio) (≈ 0.45 `ratio`),
    unless `embed` is given."""
    groups = s.groups()
    pattern_ratios = paper_pattern(groups, s.config.depth)
    mean = _neuron_mean(pattern_ratios, groups)
    if embed is None:
        embed = min(ratio * pattern_ratios["embed"] / mean, MAX_RATIO)
    if pattern == "uniform":
        return ratio_sources.uniform(groups, qk=ratio, v=ratio, ffn=ratio, embed=embed)
    if pattern == "mixed":
        scaled = {name: min(r * ratio / mean, MAX_RATIO) for name, r in pattern_ratios.items() if name != "embed"}
        return ratio_sources.validate({**scaled, "embed": embed}, groups)
    raise ValueError(f"unknown ratio pattern {pattern!r}; known: {', '.join(PATTERNS)}")


def prune(s: Subject, ratios: Mapping[str, float], name: str, scores: dict | None = None,
          head_criterion: str | snp_core.HeadImportance = "proj_l1", **params: object) -> nn.Module:
    """A pruned copy of the subject's model: `ratios` per group (`ratios.uniform` / `ratios_for`),
    neurons ranked by criterion `name` (its cached scores unless `params` or `scores` say otherwise)."""
    if scores is None and not params and head_criterion == "proj_l1":
        scores = scores_of(s, name)
    plan = snp_core.make_plan(s.model, MODEL_NAME, dict(ratios), criterion(name, s.config.seed, **params), s.calib,
                              {"source": f"{s.config.data} train", "num_images": len(s.calib)},
                              model_kwargs=s.config.model_kwargs(), head_criterion=head_criterion, scores=scores)
    return snp_core.prune(s.model, plan)


def kind_ratios(s: Subject, **per_kind: float) -> dict[str, float]:
    """`ratios.uniform` for the subject's groups (``kind_ratios(s, qk=0.5)``)."""
    return ratio_sources.uniform(s.groups(), **per_kind)


def measure(s: Subject, pruned: nn.Module) -> dict:
    """Test accuracy right after pruning, attention fidelity on the fidelity images, parameters."""
    fid = fidelity_to(s.reference, pruned, s.x_fidelity)
    return {"acc_pruned": accuracy(pruned, s.data.x_test, s.data.y_test), "cosine": fid["cosine"], "kl": fid["kl"],
            "num_params": snp_core.count_params(pruned)}


def sweep(s: Subject, settings: Settings, names: tuple[str, ...], progress: Progress) -> list[dict]:
    """The main rows: every pattern (plus ``qk_only``: only the Q/K pairs, uniform) × ratio × criterion."""
    rows = []
    for pattern in (*settings.patterns, "qk_only"):
        for ratio in settings.ratios:
            ratios = kind_ratios(s, qk=ratio) if pattern == "qk_only" else ratios_for(s, pattern, ratio, settings.embed)
            for name in names:
                t0 = time.perf_counter()
                row = {**s.key, "pattern": pattern, "ratio": ratio, "criterion": name,
                       "embed": ratios.get("embed", 0.0), **measure(s, prune(s, ratios, name)),
                       "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                progress(f"{s.config.data} seed {s.config.seed} {pattern:8s} {ratio:.0%} {name:22s}: "
                         f"acc {row['acc_pruned']:.4f}, attention cos {row['cosine']:.4f} KL {row['kl']:.4f}")
    return rows


def per_kind(s: Subject, settings: Settings, names: tuple[str, ...]) -> list[dict]:
    """Each group kind pruned alone at `settings.kinds_ratio` with each criterion (no fine-tune):
    which part of a criterion helps or hurts (the V/FFN redundancy question, the residual stream)."""
    return [{**s.key, "kind": kind, "ratio": settings.kinds_ratio, "criterion": name,
             **measure(s, prune(s, kind_ratios(s, **{kind: settings.kinds_ratio}), name))}
            for kind in KINDS for name in names]


def scan_variants(s: Subject, settings: Settings) -> list[dict]:
    """SNP's open choices (docs/method.md §13.1–2: γ × weighting × aggregate) on attention fidelity at
    `settings.kinds_ratio`. They change only the Q/K pair scores, so each prunes only the Q/K pairs."""
    rows = []
    ratios = kind_ratios(s, qk=settings.kinds_ratio)
    for gamma in settings.variant_gammas:
        for weighting in ("none", "sigma"):
            for aggregate in ("mean", "median"):
                params = {"gamma": gamma, "weighting": weighting, "aggregate": aggregate}
                m = measure(s, prune(s, ratios, "snp", **params))
                rows.append({**s.key, **params, "cosine": m["cosine"], "kl": m["kl"], "acc_pruned": m["acc_pruned"]})
    return rows


def compare_heads(s: Subject, settings: Settings) -> list[dict]:
    """Whole-head pruning alone (docs/method.md §6) at each of `settings.head_ratios`, per head criterion:
    ``proj_l1``, ``qk_sum`` (sum of the head's SNP Q/K pair scores) and ``random`` (the subject's seed).
    Removed heads have no attention map, so fidelity is the KL divergence of the class distributions."""
    rows = []
    for ratio in settings.head_ratios:
        for name in ("proj_l1", "qk_sum", "random"):
            head = snp_core.get_head_criterion(name, **({"seed": s.config.seed} if name == "random" else {}))
            pruned = prune(s, kind_ratios(s, heads=ratio), "snp", head_criterion=head)
            rows.append({**s.key, "ratio": ratio, "head_criterion": name, "heads_kept": pruned.blocks[0].attn.num_heads,
                         "acc_pruned": accuracy(pruned, s.data.x_test, s.data.y_test),
                         "output_kl": output_kl(s.model, pruned, s.data.x_test)})
    return rows


def finetune_curves(s: Subject, settings: Settings, names: tuple[str, ...], progress: Progress) -> list[dict]:
    """Test accuracy along one short fine-tune of each criterion's uniform model at `settings.finetune_ratio`
    (residual stream included): after 0 and each of `settings.finetune_steps` updates of one
    ``max(finetune_steps)``-update cosine schedule, the same data order for every criterion."""
    rows = []
    ratios = ratios_for(s, "uniform", settings.finetune_ratio, settings.embed)
    budget = max(settings.finetune_steps)
    for name in names:
        pruned = prune(s, ratios, name)
        curve = {0: accuracy(pruned, s.data.x_test, s.data.y_test)}

        def record(step: int, model: nn.Module, curve: dict = curve) -> None:
            curve[step] = accuracy(model, s.data.x_test, s.data.y_test)

        fit(copy.deepcopy(pruned), s.data, budget, settings.finetune_lr, s.config.weight_decay,
            batch_size=s.config.batch_size, seed=s.config.seed, at_steps=settings.finetune_steps, on_step=record)
        rows += [{**s.key, "criterion": name, "ratio": settings.finetune_ratio, "steps": k, "acc": v}
                 for k, v in sorted(curve.items())]
        progress(f"{s.config.data} seed {s.config.seed} fine-tune {name:22s}: "
                 + ", ".join(f"{k} steps {v:.3f}" for k, v in sorted(curve.items())))
    return rows


def map_grid(s: Subject, settings: Settings, names: tuple[str, ...]) -> dict:
    """For the attention-map figure: the last block's attention map (mean over heads) of the first
    `settings.map_images` test images, per criterion and Q/K ratio (only the Q/K pairs pruned)."""
    x = s.data.x_test[:settings.map_images]
    grid = {}
    for name in names:
        grid[name] = {}
        for ratio in settings.map_ratios:
            model = prune(s, kind_ratios(s, qk=ratio), name) if ratio > 0 else s.model
            grid[name][ratio] = attention_maps(model, x)[-1].mean(1)  # [images, N, N]
    return {"images": x, "maps": grid, "tokens": s.config.tokens}


#: The parts of a result that each subject adds to (lists of rows), in results.json order.
PARTS = ("train", "unpruned", "rows", "per_kind", "variants", "heads", "finetune")
#: Bumped whenever what a subject's measurements mean changes (part of the subject cache key).
STUDY_VERSION = 1
#: A subject's measured parts and its attention-map grid in ``<cache>/<TrainConfig.key()>/``.
SUBJECT_FILE, MAPS_FILE = "study-{key}.json", "maps-{key}.safetensors"


def study_key(settings: Settings, names: tuple[str, ...], with_maps: bool) -> str:
    """A short hash of everything that changes one subject's measurements (not which benchmarks and
    seeds are run, nor where the cache is): a finished subject is reused by a rerun or a resumed one."""
    chosen = {k: v for k, v in settings.to_dict().items() if k not in ("benchmarks", "seeds", "cache", "criteria")}
    text = json.dumps({"version": STUDY_VERSION, "criteria": list(names), "maps": with_maps, **chosen},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def measure_subject(s: Subject, settings: Settings, names: tuple[str, ...], with_maps: bool,
                    progress: Progress) -> tuple[dict, dict | None]:
    """Everything measured on one subject: its parts (lists of rows, `PARTS`) and, when `with_maps`,
    its attention-map grid (`map_grid`)."""
    parts: dict = {part: [] for part in PARTS}
    parts["train"].append({**s.key, **s.info})
    parts["unpruned"].append({**s.key, "acc": accuracy(s.model, s.data.x_test, s.data.y_test),
                              "num_params": snp_core.count_params(s.model)})
    parts["rows"] += sweep(s, settings, names, progress)
    if settings.kinds_ratio:
        parts["per_kind"] += per_kind(s, settings, names)
    if settings.variant_gammas and settings.kinds_ratio:
        parts["variants"] += scan_variants(s, settings)
    if settings.head_ratios:
        parts["heads"] += compare_heads(s, settings)
    if settings.finetune_steps:
        parts["finetune"] += finetune_curves(s, settings, names, progress)
    return parts, (map_grid(s, settings, names) if with_maps else None)


def _save_subject(folder: Path, key: str, parts: dict, grid: dict | None) -> None:
    """Write a finished subject (the JSON last: it is what marks the subject done)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if grid is not None:
        tensors = {"images": grid["images"].contiguous()}
        tensors.update({f"maps/{name}/{ratio!r}": m.contiguous() for name, by_ratio in grid["maps"].items()
                        for ratio, m in by_ratio.items()})
        save_file(tensors, str(folder / MAPS_FILE.format(key=key)), metadata={"tokens": str(grid["tokens"])})
    tmp = folder / (SUBJECT_FILE.format(key=key) + ".tmp")
    tmp.write_text(json.dumps(parts) + "\n")
    tmp.replace(folder / SUBJECT_FILE.format(key=key))


def _load_subject(folder: Path, key: str, with_maps: bool,
                  names: tuple[str, ...]) -> tuple[dict, dict | None] | None:
    """A finished subject from the cache, or None (not there, or its maps are missing); the maps in
    criterion (`names`) and ratio order, as `map_grid` builds them."""
    path, maps = folder / SUBJECT_FILE.format(key=key), folder / MAPS_FILE.format(key=key)
    if not path.is_file() or (with_maps and not maps.is_file()):
        return None
    parts = json.loads(path.read_text())
    if not with_maps:
        return parts, None
    from safetensors import safe_open

    maps_by: dict[str, dict[float, torch.Tensor]] = {}
    with safe_open(str(maps), framework="pt") as f:
        grid = {"tokens": int(f.metadata()["tokens"]), "images": f.get_tensor("images")}
        for name in f.keys():
            if name != "images":
                _, criterion_name, ratio = name.split("/")
                maps_by.setdefault(criterion_name, {})[float(ratio)] = f.get_tensor(name)
    grid["maps"] = {n: dict(sorted(maps_by[n].items())) for n in names if n in maps_by}
    return parts, grid


def run_experiment(settings: Settings, progress: Progress | None = None) -> dict:
    """The whole study, per benchmark and training seed: train (or load) the model, the main sweep,
    each kind alone, SNP's open choices, whole heads, the fine-tune curves; the attention-map grid
    on the first seed. `progress` gets one line per step (default: this module's logger at INFO).
    ``attention_maps`` in the result holds tensors (for the figure, not for results.json).

    Each finished subject is saved under the cache (`study_key`), so a run that stops (Ctrl-C, a
    crash, the end of a working day) loses at most the subject in progress, and a rerun with the
    same settings only reports."""
    progress = progress or log.info
    started = time.perf_counter()
    names = available(settings.criteria)
    missing = [n for n in settings.criteria if n not in names]
    if missing:
        progress(f"criteria not in snp_core (skipped): {', '.join(missing)}")
    result: dict = {"settings": settings.to_dict(), "criteria": list(names), **{part: [] for part in PARTS},
                    "attention_maps": {}, "cached_subjects": 0}
    for base in settings.benchmarks:
        for seed in settings.seeds:
            config = TrainConfig(**{**asdict(base), "seed": seed})
            with_maps = bool(settings.map_ratios) and seed == settings.seeds[0]
            folder, key = settings.cache / config.key(), study_key(settings, names, with_maps)
            cached = _load_subject(folder, key, with_maps, names)
            if cached is not None:
                progress(f"{config.data} seed {seed}: measured before, from {folder / SUBJECT_FILE.format(key=key)}")
                parts, grid = cached
                result["cached_subjects"] += 1
            else:
                t0 = time.perf_counter()
                parts, grid = measure_subject(subject(config, settings, progress), settings, names, with_maps,
                                              progress)
                parts["train"][0]["study_seconds"] = round(time.perf_counter() - t0, 1)  # training included
                _save_subject(folder, key, parts, grid)
            for part in PARTS:
                result[part] += parts[part]
            if grid is not None:
                result["attention_maps"][config.data] = grid
            progress(f"{config.data} seed {seed} done ({time.perf_counter() - started:.0f} s so far)")
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result
