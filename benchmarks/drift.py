"""Does a busy machine still give the right speedup? A real sweep, quiet and then under a CPU hog.

Runs the same local sweep of DeiT-T and its SNP model (.onnx, onnxruntime, 1
thread, random weights) through the harness twice: once on a quiet machine, and
once with a bounded CPU hog (busy processes, one per core, that stop by
themselves after ``--hog-seconds``) running during the first part of the sweep.
Prints both speedups with their 95 % intervals and validity marks. With
interleaved rounds the loaded speedup should lie within 5 % of the quiet one,
or its cell be marked; ``--block`` also runs both with one round per model (the
old block design) for contrast.

    .venv/bin/python benchmarks/drift.py [--quick] [--hog-seconds 20] [--block]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import config as harness_config  # noqa: E402
from harness.runner import SweepRequest, run_sweep  # noqa: E402
from results.intervals import speedup_interval, validity  # noqa: E402
from results.speedup import pair_records  # noqa: E402
from results.store import Store  # noqa: E402

MEASURE = {"full": "warmup_iterations = 200\niterations = 1000\nmin_seconds = 10.0\ntimeout_s = 1800",
           "quick": "warmup_iterations = 20\niterations = 200\nmin_seconds = 2.0\ntimeout_s = 600"}
HOG = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def start_hog(seconds: float) -> list[subprocess.Popen]:
    """One busy process per core; each ends by itself after `seconds`."""
    return [subprocess.Popen([sys.executable, "-c", HOG.format(seconds=seconds)]) for _ in range(os.cpu_count() or 1)]


def one_sweep(tmp: Path, name: str, measure: str, rounds: int, artifacts: Path,
              hog_seconds: float) -> tuple[str, float, bool]:
    """Sweep once (under a hog when `hog_seconds`): the line to print, the speedup, and whether it is marked."""
    cfg_path = tmp / f"{name}.toml"
    cfg_path.write_text(f'[paths]\nstore = "{tmp}/{name}.sqlite"\nartifacts = "{artifacts}"\n\n'
                        f'[measure]\n{measure}\nrounds = {rounds}\n\n'
                        f'[devices.bench]\nkind = "local"\nworkdir = "{tmp}/device"\n'
                        f'runtimes = {{ onnxruntime = {{ threads = 1 }} }}\n')
    cfg = harness_config.load(cfg_path)
    hog = start_hog(hog_seconds) if hog_seconds else []
    started = time.monotonic()
    try:
        outcome = run_sweep(cfg, Store(cfg.store), SweepRequest(models=["deit_tiny", "deit_tiny_snp"],
                                                                formats=["onnx"]))
    finally:
        for proc in hog:
            proc.wait()
    pairs = pair_records(outcome.records)
    if not pairs:
        errors = "; ".join(f"{r['variant']}: {r['error_message']}" for r in outcome.errors)
        return f"{name:14s} no speedup ({errors or 'no pair'})", float("nan"), True
    pruned, base = pairs[0]
    interval = speedup_interval(base, pruned)
    reasons = validity(base, pruned, interval)
    mark = "INVALID: " + "; ".join(reasons) if reasons else "valid"
    bounds = f"{interval.low:.3f}-{interval.high:.3f}" if interval.low is not None else "no interval"
    return (f"{name:14s} {interval.point:.3f}x ({bounds}), "
            f"{base['median_ms']:.2f} -> {pruned['median_ms']:.2f} ms, {rounds} round(s), "
            f"{time.monotonic() - started:.0f} s; {mark}"), interval.point, bool(reasons)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer iterations per model (a smoke test, not a figure)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    p.add_argument("--hog-seconds", type=float, default=20.0, help="how long the CPU hog runs in the loaded sweep")
    p.add_argument("--block", action="store_true", help="also run both with one round (the block design)")
    p.add_argument("--artifacts", type=Path, default=ROOT / "runs" / "artifacts", help="export cache (shared)")
    args = p.parse_args()

    measure = MEASURE["quick" if args.quick else "full"]
    designs = [("rounds", args.rounds)] + ([("block", 1)] if args.block else [])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for design, rounds in designs:
            quiet_line, quiet, _ = one_sweep(tmp, f"{design}-quiet", measure, rounds, args.artifacts.resolve(), 0)
            print(quiet_line, flush=True)
            loaded_line, loaded, marked = one_sweep(tmp, f"{design}-loaded", measure, rounds,
                                                    args.artifacts.resolve(), args.hog_seconds)
            print(loaded_line, flush=True)
            change = loaded / quiet - 1
            verdict = "within 5 %" if abs(change) <= 0.05 else ("marked invalid" if marked else "UNMARKED MISS")
            print(f"{design}: loaded vs quiet speedup {100 * change:+.1f} % -> {verdict}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
