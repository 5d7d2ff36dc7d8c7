"""``python -m bench compress``: prune one timm model with SNP and save plan + weights.

The command fills a `harness.compress.CompressRequest` and calls
`harness.compress.compress`; it prints the one-line summary (or, for a latency
budget, the search's candidates and target / predicted / measured).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import formats

from . import exit_codes, vocab
from .options import (HelpFormatter, add_quiet, bar_disable, non_negative_int, note, number, output_dir,
                      positive_int, positive_number)
from .runs import add_store_options, load_config, outputs_root

if TYPE_CHECKING:
    from harness.compress import CompressRequest, CompressResult


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "compress", help=help,
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
                     help=f"'paper' (the paper's file for --model), a config name ({', '.join(vocab.ratio_configs())}) "
                          "or a JSON file (ours or the paper's format); default: paper, unless --qk/--v/--ffn/--embed are given")
    for kind, what in (("qk", "query/key pairs per head"), ("v", "value neurons per head"),
                       ("ffn", "MLP hidden neurons"), ("embed", "residual-stream channels")):
        src.add_argument(f"--{kind}", type=number, metavar="R", help=f"uniform ratio for {what}")
    src.add_argument("--heads", type=number, metavar="R",
                     help="fraction of whole heads removed in every block (conventional head pruning, done before "
                          "SNP; combines with --ratios or the uniform ratios and is held fixed by "
                          "--target-gmacs/-latency)")
    src.add_argument("--target-gmacs", type=positive_number, metavar="X",
                     help="scale the ratio pattern (above, or the paper's, or "
                          f"{vocab.DEFAULT_PATTERN}) until the pruned model has X GMACs (within 2%%)")
    src.add_argument("--hold", metavar="KINDS", type=_kinds, default=(),
                     help="comma-separated group kinds (qk, v, ffn, embed) whose ratios --target-gmacs/-latency "
                          "keep as given while they scale the others, e.g. --hold qk,v")
    src.add_argument("--round-to", type=positive_int, metavar="N", help="round every kept width to a multiple of N (GEMM-friendly); with --target-latency "
                          "the default is the multiple the device's runtime likes ("
                          + ", ".join(f"{r.name} {r.round_to}" for r in formats.RUNTIMES.values() if r.round_to)
                          + ": docs/efficiency.md), 1 turns rounding off")
    crit = p.add_argument_group("criterion")
    crit.add_argument("--criterion", default="snp", choices=vocab.CRITERIA,
                      help="importance criterion: snp is the paper's method (the default); in the project's "
                           "ablation (docs/ablation/) l2 kept accuracy and attention maps as well or better")
    crit.add_argument("--head-criterion", default="proj_l1", choices=vocab.HEAD_CRITERIA,
                      help="ranks whole heads for --heads: proj_l1 (L1 norm of the head's output-projection columns) "
                           "or qk_sum (sum of its Q/K pair scores)")
    crit.add_argument("--gamma", default="0.9", type=_gamma,
                      help="SNP singular components: an int (fixed count) or a float in (0, 1] (energy fraction)")
    crit.add_argument("--weighting", default="none", choices=("none", "sigma"), help="SNP: weight components by σ")
    crit.add_argument("--aggregate", default="mean", choices=("mean", "median"), help="SNP: over calibration images")
    crit.add_argument("--seed", type=non_negative_int, default=0, help="seed for calibration sampling and the random criterion")
    cal = p.add_argument_group("calibration (only for criteria that use activations: snp and its variants snp_*, reverse)")
    cal.add_argument("--calib", metavar="PATH",
                     help="image folder (ImageFolder layout or flat) or a .npy/.pt tensor [N,3,H,W]; "
                          "default: scikit-image sample photos (logged warning)")
    cal.add_argument("--num-calib", type=positive_int, default=64, help="number of calibration images (paper: 64)")
    cal.add_argument("--batch-size", type=positive_int, default=16,
                     help="calibration batch size (images per forward pass)")
    add_latency_arguments(p)
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=output_dir, help="output folder (default: ROOT/compress/<model>-<criterion>, "
                                                  "+ -<T>ms-<device> with --target-latency)")
    p.add_argument("--root", type=Path, metavar="DIR",
                   help="outputs root: the default --out and, with --target-latency, the store and artifacts go "
                        "under DIR (default: [paths] root of the config, runs)")
    add_quiet(p)
    p.set_defaults(func=run)


def _gamma(text: str) -> int | float:
    """SNP's gamma: a positive int (a count of singular components) or a float in (0, 1] (an energy fraction)."""
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            value = 0
        if not 0 < value <= 1:
            raise argparse.ArgumentTypeError(f"{text!r} is neither a positive int nor a float in (0, 1]") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a positive int nor a float in (0, 1]")
    return value


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
    bad = [k for k in kinds if k not in vocab.KINDS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown group kind {bad[0]!r}; known: {', '.join(vocab.KINDS)}")
    return kinds


def add_latency_arguments(p: argparse.ArgumentParser) -> None:
    """The --target-latency options, with the procedure (`harness.target_latency`) in the group's help."""
    fractions = ", ".join(f"{f:.0%}" for f in vocab.PROFILE_FRACTIONS)
    g = p.add_argument_group(
        "latency target (measured on a device)",
        "--target-latency T --device NAME prunes until the model runs in T on that device. First a profile: "
        "the ratio pattern above (the one --target-gmacs scales) and a uniform one are each scaled to "
        f"{fractions} of the MACs (data-free l2 pruning, with --round-to), "
        "exported in the runtime's format and timed on the device exactly as `bench sweep` times it; every "
        "measurement is a record in the results store and the curves are kept there, so later calls for the same "
        "device, runtime, model, input shape and pattern reuse them (--reprofile measures again). Then a search: "
        "each pattern's median latency against MACs (monotone, linear between points) is inverted at the target, "
        "and of the settings predicted to meet it the one that removes the least of the criterion's scores "
        "(averaged over groups) is pruned and saved. Last, the pruned model is timed on the device and target, "
        f"predicted and measured are printed; a miss by more than {vocab.LATENCY_TOLERANCE:.0%} corrects the "
        "curve with the measured point and searches once more.")
    g.add_argument("--target-latency", metavar="T",
                   help="latency budget per image (batch 1): 30ms, '30 ms', 0.03s, 30000us, or a bare number in ms")
    g.add_argument("--device", metavar="NAME", help="device of the config to measure on, e.g. local or pi")
    g.add_argument("--runtime", help="runtime on that device (default: the first the device lists)")
    add_store_options(g, root=False)
    g.add_argument("--reprofile", action="store_true", help="measure the latency profile again, even if stored")
    g.add_argument("--trust-new-hosts", action="store_true",
                   help="add a first-seen SSH host key to known_hosts (changed keys are always refused)")


def request(args: argparse.Namespace) -> CompressRequest:
    """The library request the flags describe."""
    from harness.compress import CompressRequest, LatencyTarget
    from harness.latency_model import TargetLatencyError

    root = outputs_root(args, load_config(args))  # --root, else the config's [paths] root
    latency = None
    if args.target_latency is None:
        given = [f"--{o}" for o in ("device", "runtime", "reprofile") if getattr(args, o)]
        if given:
            raise TargetLatencyError(f"{', '.join(given)}: only used with --target-latency (a latency budget)")
    elif not args.device:
        raise TargetLatencyError("--target-latency needs --device NAME (a device of bench.toml; 'local' is this "
                                 "machine)")
    else:
        latency = LatencyTarget(args.target_latency, args.device, args.runtime, args.config, args.store,
                                args.reprofile, args.trust_new_hosts, root)
    return CompressRequest(
        model=args.model, weights=args.weights, model_kwargs=args.model_kwargs, ratios=args.ratios,
        uniform={k: getattr(args, k) for k in vocab.KINDS if k != "heads" and getattr(args, k) is not None},
        heads=args.heads, target_gmacs=args.target_gmacs, latency=latency, hold=args.hold, round_to=args.round_to,
        criterion=args.criterion,
        criterion_options={"gamma": args.gamma, "weighting": args.weighting, "aggregate": args.aggregate},
        head_criterion=args.head_criterion, calib=args.calib, num_calib=args.num_calib, batch_size=args.batch_size,
        seed=args.seed, out=args.out, root=root)


def run(args: argparse.Namespace) -> int:
    import torch

    from harness.compress import compress

    from .progress import CompressBars, logging_above_bars

    if args.threads:
        torch.set_num_threads(args.threads)
    req = request(args)
    bars = CompressBars(bar_disable(args), say=lambda text: note(args, text))
    try:
        with logging_above_bars():
            result = compress(req, bars)
    finally:
        bars.close()
    if result.latency is not None:
        _print_latency_summary(req, result)
        return exit_codes.OK
    plan = result.plan
    before, after = plan.params["original"], plan.params["pruned"]
    macs0, macs1 = plan.macs["original"], plan.macs["pruned"]
    calib = result.calib_info
    calib_text = f"{calib['num_images']} calibration images" if calib else "no calibration (data-free)"
    print(f"{req.model} [{req.criterion}, {result.origin}{', round-to ' + str(req.round_to) if req.round_to else ''}]: "
          f"params {before / 1e6:.2f}M -> {after / 1e6:.2f}M ({before / after:.2f}x), "
          f"GMACs {macs0 / 1e9:.3f} -> {macs1 / 1e9:.3f} ({macs0 / macs1:.2f}x); {calib_text}; "
          f"{result.elapsed_s:.1f} s; saved to {result.out}/")
    return exit_codes.OK


def _print_latency_summary(req: CompressRequest, result: CompressResult) -> None:
    found = result.latency
    assert found is not None
    attempts, last, target = found.attempts, found.attempts[-1], found.target_ms
    rounding = f", round-to {found.plan.round_to}" if found.plan.round_to else ""
    print(f"{req.model} [{req.criterion}, target {target:.4g} ms on {found.where}{rounding}]:")
    for c in last.candidates:
        qk = "" if c["qk_loss"] is None else f" (qk {c['qk_loss']:.3f})"
        print(f"  pattern {c['pattern']!r}: {c['macs'] / 1e9:.3f} GMACs, predicted {c['predicted_ms']:.4g} ms, "
              f"score mass removed {c['loss']:.3f}{qk}{'  <- chosen' if c['chosen'] else ''}")
    for a in attempts[:-1]:
        print(f"  first try ({a.pattern}, {a.macs / 1e9:.3f} GMACs): predicted {a.predicted_ms:.4g} ms, measured "
              f"{a.measured_ms:.4g} ms ({100 * a.error(target):+.1f} % vs target); curve corrected")
    print(f"  target {target:.4g} ms, predicted {last.predicted_ms:.4g} ms, measured {last.measured_ms:.4g} ms "
          f"(median, record {last.record_id} of run {last.run_id}): {100 * last.error(target):+.1f} % vs "
          f"target, {100 * last.error(last.predicted_ms):+.1f} % vs predicted")
    plan = found.plan
    before, after = plan.params["original"], plan.params["pruned"]
    macs0, macs1 = plan.macs["original"], plan.macs["pruned"]
    print(f"  params {before / 1e6:.2f}M -> {after / 1e6:.2f}M, GMACs {macs0 / 1e9:.3f} -> {macs1 / 1e9:.3f} "
          f"({macs0 / macs1:.2f}x); saved to {result.out}/")
    if found.missed:
        print(f"warning: the measured median misses the target by {100 * last.error(target):+.1f} % "
              f"(more than {vocab.LATENCY_TOLERANCE:.0%}); the device may be noisy or the profile stale: try "
              "--reprofile", file=sys.stderr)
