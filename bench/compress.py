"""``python -m bench compress``: prune one timm model with SNP and save plan + weights."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

import snp_core
from snp_core import ratios as ratio_sources
from snp_core.errors import RatioError

from . import target_latency
from .options import HelpFormatter

log = logging.getLogger(__name__)

#: Pattern scaled by --target-gmacs when the model has no paper ratios and none is given:
#: attention pruned hardest, the residual stream least, as in the paper's files.
DEFAULT_PATTERN = {"qk": 0.5, "v": 0.5, "ffn": 0.5, "embed": 0.2}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress", help="prune a timm ViT with SNP and save plan.json + model.safetensors",
        description="Prune a timm Vision Transformer with SNP (or a baseline criterion) and save the pruning plan "
                    "and weights. Ratios are fractions of neurons REMOVED. Choose them with --ratios (the paper's "
                    "published files, a shipped config or a JSON file), or per kind with --qk/--v/--ffn/--embed, "
                    "or let --target-gmacs scale a pattern to a MACs budget, or --target-latency to a latency "
                    "measured on a device.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default="deit_tiny_patch16_224", help="timm model name")
    p.add_argument("--weights", default="pretrained",
                   help="'pretrained' (timm download), 'random' (offline smoke tests) or a checkpoint path")
    p.add_argument("--model-kwargs", type=_json_object, default={}, metavar="JSON",
                   help="keyword arguments for timm.create_model, e.g. '{\"img_size\": 160}' (kept in the plan)")
    src = p.add_argument_group("ratios (fractions removed, each in [0, 1))")
    src.add_argument("--ratios", metavar="SPEC",
                     help=f"'paper' (the paper's file for --model), a config name ({', '.join(ratio_sources.config_names())}) "
                          "or a JSON file (ours or the paper's format); default: paper, unless --qk/--v/--ffn/--embed are given")
    for kind, what in (("qk", "query/key pairs per head"), ("v", "value neurons per head"),
                       ("ffn", "MLP hidden neurons"), ("embed", "residual-stream channels")):
        src.add_argument(f"--{kind}", type=float, metavar="R", help=f"uniform ratio for {what}")
    src.add_argument("--heads", type=float, metavar="R",
                     help="fraction of whole heads removed in every block (conventional head pruning, done before "
                          "SNP; combines with --ratios or the uniform ratios and is held fixed by "
                          "--target-gmacs/-latency)")
    src.add_argument("--target-gmacs", type=float, metavar="X",
                     help="scale the ratio pattern (above, or the paper's, or "
                          f"{DEFAULT_PATTERN}) until the pruned model has X GMACs (within 2%%)")
    src.add_argument("--hold", metavar="KINDS", type=_kinds, default=(),
                     help="comma-separated group kinds (qk, v, ffn, embed) whose ratios --target-gmacs/-latency "
                          "keep as given while they scale the others, e.g. --hold qk,v")
    src.add_argument("--round-to", type=int, metavar="N", help="round every kept width to a multiple of N (GEMM-friendly)")
    crit = p.add_argument_group("criterion")
    crit.add_argument("--criterion", default="snp", choices=sorted(snp_core.CRITERIA), help="importance criterion")
    crit.add_argument("--head-criterion", default="proj_l1", choices=sorted(snp_core.HEAD_CRITERIA),
                      help="ranks whole heads for --heads: proj_l1 (L1 norm of the head's output-projection columns) "
                           "or qk_sum (sum of its Q/K pair scores)")
    crit.add_argument("--gamma", default="0.9", type=_gamma,
                      help="SNP singular components: an int (fixed count) or a float in (0, 1] (energy fraction)")
    crit.add_argument("--weighting", default="none", choices=("none", "sigma"), help="SNP: weight components by σ")
    crit.add_argument("--aggregate", default="mean", choices=("mean", "median"), help="SNP: over calibration images")
    crit.add_argument("--seed", type=int, default=0, help="seed for calibration sampling and the random criterion")
    cal = p.add_argument_group("calibration (only for criteria that use activations: snp, reverse)")
    cal.add_argument("--calib", metavar="PATH",
                     help="image folder (ImageFolder layout or flat) or a .npy/.pt tensor [N,3,H,W]; "
                          "default: scikit-image sample photos (logged warning)")
    cal.add_argument("--num-calib", type=int, default=64, help="number of calibration images (paper: 64)")
    cal.add_argument("--batch-size", type=int, default=16, help="calibration batch size")
    target_latency.add_arguments(p)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/compress/<model>-<criterion>, "
                                                  "+ -<T>ms-<device> with --target-latency)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _gamma(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"gamma {text!r} is neither an int nor a float") from None


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object, e.g. '{{\"img_size\": 160}}'")
    return value


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in ratio_sources.KINDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown group kind {bad[0]!r}; known: {', '.join(ratio_sources.KINDS)}")
    return kinds


def _criterion(args: argparse.Namespace) -> snp_core.Importance:
    if args.criterion in ("snp", "reverse"):
        return snp_core.get_criterion(args.criterion, gamma=args.gamma, weighting=args.weighting,
                                      aggregate=args.aggregate)
    if args.criterion == "random":
        return snp_core.get_criterion("random", seed=args.seed)
    return snp_core.get_criterion(args.criterion)


def _pattern(args: argparse.Namespace, groups: list[snp_core.groups.Group]) -> tuple[dict, str, list[str]]:
    """The ratios before any budget scales them, where they came from, and the groups a budget leaves alone."""
    uniform = {k: getattr(args, k) for k in ("qk", "v", "ffn", "embed") if getattr(args, k) is not None}
    if uniform and args.ratios:
        raise RatioError(f"--ratios {args.ratios!r} and uniform ratios ({', '.join('--' + k for k in uniform)}) "
                         "are exclusive; give one or the other")
    if uniform:
        ratios, origin = ratio_sources.uniform(groups, **uniform), "uniform " + " ".join(f"{k}={v}" for k, v in uniform.items())
    elif args.ratios or (args.target_gmacs is None and args.target_latency is None):
        ratios, origin = ratio_sources.resolve(args.ratios or "paper", args.model), f"ratios {args.ratios or 'paper'}"
    else:
        try:  # the paper's ratios, when they fit this model (not e.g. a shallower one made with --model-kwargs)
            ratios, origin = ratio_sources.validate(ratio_sources.resolve("paper", args.model), groups), "paper pattern"
        except RatioError:
            ratios, origin = ratio_sources.uniform(groups, **DEFAULT_PATTERN), "default pattern"
    fixed = [g.name for g in groups if g.kind in args.hold]
    if args.heads is not None:
        heads = [g.name for g in groups if g.kind == "heads"]
        fixed += heads
        if not heads:
            raise RatioError(f"--heads {args.heads}: model {args.model!r} has no prunable head groups")
        ratios = {**ratios, **ratio_sources.uniform([g for g in groups if g.kind == "heads"], heads=args.heads)}
        origin += f" + heads={args.heads}"
    return ratios, origin, fixed


def _ratios(args: argparse.Namespace, groups: list[snp_core.groups.Group], adapter) -> tuple[dict, str]:
    """The ratios to prune with and a short description of where they came from."""
    ratios, origin, fixed = _pattern(args, groups)
    if args.target_gmacs is not None:
        ratios = ratio_sources.scale_to_target(ratios, groups, adapter.macs, args.target_gmacs * 1e9, args.round_to,
                                               fixed=fixed)
        origin += f" scaled to {args.target_gmacs} GMACs"
    return ratios, origin


def _calibration(args: argparse.Namespace, model: torch.nn.Module,
                 criterion: snp_core.Importance) -> tuple[torch.Tensor | None, dict | None]:
    """Calibration images and their description, for criteria that use activations; (None, None) otherwise."""
    if not criterion.uses_activations:
        return None, None
    calib = snp_core.calibration.load(args.calib, model, args.num_calib, args.seed)
    return calib.images, calib.info()


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.round_to is not None and args.round_to < 1:
        raise RatioError(f"--round-to {args.round_to} must be a positive integer")
    latency = target_latency.request(args)  # a bad target or device fails before the model is built
    model = snp_core.create(args.model, args.weights, **args.model_kwargs)
    adapter = snp_core.adapter_for(model, args.model)
    criterion = _criterion(args)
    if latency is not None:
        base, origin, fixed = _pattern(args, adapter.groups())
        snp_core.kept_widths(adapter.groups(), base, args.round_to)
        return target_latency.run(latency, args, model, adapter, criterion, *_calibration(args, model, criterion),
                                  base, origin, fixed)
    ratios, origin = _ratios(args, adapter.groups(), adapter)
    snp_core.kept_widths(adapter.groups(), ratios, args.round_to)  # bad ratios fail before calibration starts

    started = time.perf_counter()
    images, calib_info = _calibration(args, model, criterion)
    plan = snp_core.make_plan(model, args.model, ratios, criterion, images, calib_info, round_to=args.round_to,
                              batch_size=args.batch_size, progress=not args.quiet,
                              model_kwargs=args.model_kwargs, head_criterion=args.head_criterion)
    pruned = snp_core.prune(model, plan)
    elapsed = time.perf_counter() - started

    out = args.out or Path("runs") / "compress" / f"{args.model}-{args.criterion}"
    snp_core.save(out, pruned, plan)
    before, after = plan.params["original"], plan.params["pruned"]
    macs0, macs1 = plan.macs["original"], plan.macs["pruned"]
    calib_text = f"{calib_info['num_images']} calibration images" if calib_info else "no calibration (data-free)"
    print(f"{args.model} [{args.criterion}, {origin}{', round-to ' + str(args.round_to) if args.round_to else ''}]: "
          f"params {before / 1e6:.2f}M -> {after / 1e6:.2f}M ({before / after:.2f}x), "
          f"GMACs {macs0 / 1e9:.3f} -> {macs1 / 1e9:.3f} ({macs0 / macs1:.2f}x); {calib_text}; "
          f"{elapsed:.1f} s; saved to {out}/")
    return 0
