"""``python -m bench inspect DIR``: what a saved pruned model is, and does it still load."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import exit_codes
from .options import HelpFormatter


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("inspect", help=help,
                       description="Print a pruning plan's model, criterion, ratios, MACs, params and kept widths per "
                                   "block, then rebuild the model from plan + weights to check they fit.",
                       formatter_class=HelpFormatter)
    p.add_argument("path", type=Path, help="output folder of `bench compress`, or a plan.json")
    p.add_argument("--no-load", action="store_true", help="only read the plan; do not rebuild the model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import snp_core
    from snp_core.plan import Plan

    plan = Plan.read(args.path)
    crit = plan.criterion
    params = ", ".join(f"{k}={v}" for k, v in crit.get("params", {}).items())
    calib = plan.calibration or {}
    print(f"model      {plan.model} ({plan.family})")
    heads = f"; whole heads ranked by {crit['heads']}" if "heads" in crit else ""
    print(f"criterion  {crit.get('name')}{f' ({params})' if params else ''}{heads}")
    print(f"calibration {calib.get('num_images', 0)} images from {calib.get('source', 'none')}")
    if plan.round_to:
        print(f"round-to   {plan.round_to}")
    if plan.macs:
        print(f"GMACs      {plan.macs['original'] / 1e9:.3f} -> {plan.macs['pruned'] / 1e9:.3f}")
    if plan.params.get("pruned"):
        print(f"params     {plan.params['original'] / 1e6:.2f}M -> {plan.params['pruned'] / 1e6:.2f}M")
    embeds = {name: w for name, w in plan.widths.items() if name.rsplit(".", 1)[-1] == "embed"}
    print("residual   " + ", ".join(f"{name} {w}" for name, w in embeds.items()))
    # one line per layer (the group name without its kind), e.g. blocks.3 or stages.2.blocks.1
    layers = dict.fromkeys(name.rsplit(".", 1)[0] for name in plan.widths if "." in name and name not in embeds)
    width = max((len(layer) for layer in layers), default=5)
    print(f"{'layer':<{width}}  heads  qk/head  v/head    ffn")
    for layer in layers:
        w = {kind: plan.widths.get(f"{layer}.{kind}", "-") for kind in ("heads", "qk", "v", "ffn")}
        print(f"{layer:<{width}}  {w['heads']:>5}  {w['qk']:>7}  {w['v']:>6}  {w['ffn']:>5}")
    if not args.no_load:
        model = snp_core.load(args.path)
        print(f"rebuilt    ok, {snp_core.count_params(model) / 1e6:.2f}M params, "
              f"{snp_core.count_macs(model) / 1e9:.3f} GMACs")
    return exit_codes.OK
