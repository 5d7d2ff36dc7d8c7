"""Does ``bench compress --target-latency`` hit its target? (issue 6 goal: measured median within 10 %)

Times the unpruned model once through the harness to pick a target (``--fraction``
of its median, 0.7 by default, or ``--target MS``), then runs the whole
``--target-latency`` procedure (profile, search, prune, verify) in a fresh
results store and prints target / predicted / measured. Random weights: latency
does not depend on them. Defaults: DeiT-T at 224², .onnx through onnxruntime,
1 thread, on this machine (``local``), with the paper's measurement settings
(200 warm-up runs, then ≥ 1000 runs and ≥ 10 s per model). ``--ssh`` measures
through a throwaway OpenSSH server on loopback instead (``tests/sshd.py``; needs
``openssh-server``): the same machine, reached the way a real device is.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/target_latency.py [--fraction 0.7] [--ssh] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import exporters  # noqa: E402
import snp_core  # noqa: E402
from bench.cli import main as bench_main  # noqa: E402
from harness import config as harness_config  # noqa: E402
from harness import target_latency  # noqa: E402
from harness.runner import Progress  # noqa: E402
from results.store import Store  # noqa: E402

MEASURE = {"full": "warmup_iterations = 200\niterations = 1000\nmin_seconds = 10.0\ntimeout_s = 1800",
           "quick": "warmup_iterations = 20\niterations = 200\nmin_seconds = 2.0\ntimeout_s = 600"}


@contextlib.contextmanager
def device_table(tmp: Path, ssh: bool, threads: int) -> Iterator[str]:
    """The [devices.bench] table: this machine, directly or through a loopback sshd started for the run."""
    runtimes = f"runtimes = {{ onnxruntime = {{ threads = {threads} }} }}"
    if not ssh:
        yield f'[devices.bench]\nkind = "local"\nworkdir = "{tmp}/device"\n{runtimes}\n'
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from sshd import start_sshd

    server = start_sshd(tmp / "sshd")
    try:
        yield (f'[devices.bench]\nkind = "ssh"\nhost = "{server.alias}"\nssh_config = "{server.ssh_config}"\n'
               f'known_hosts = "{server.known_hosts}"\nidentity_file = "{server.client_key}"\n'
               f'python = "{sys.executable}"\nworkdir = "{tmp}/remote"\n{runtimes}\n')
    finally:
        server.stop()


def original_median(cfg: harness_config.Config, model_name: str) -> float:
    """The unpruned model's median on the device, timed through the same harness (its own run in the store)."""
    req = target_latency.Request(1.0, cfg.devices["bench"], "onnxruntime", "onnx", cfg.measure, cfg.store,
                                 cfg.artifacts, False)
    model = snp_core.create(model_name)
    art = exporters.export(model, "onnx", cfg.artifacts, input_shape=(1, *snp_core.models.input_size(model)),
                           source=model_name)
    _, timed = target_latency.time_models(req, Store(cfg.store), [(target_latency.Timed("original", model_name,
                                                                                          "original"), art)],
                                          "target-latency benchmark: original", {}, "latency-verify", Progress())
    return timed["original"]["median_ms"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fraction", type=float, default=0.7, help="target = this fraction of the original's median")
    p.add_argument("--target", type=float, help="target in ms (instead of --fraction)")
    p.add_argument("--round-to", type=int)
    p.add_argument("--ssh", action="store_true", help="measure through a loopback sshd instead of locally")
    p.add_argument("--quick", action="store_true", help="fewer iterations per model (a smoke test, not a figure)")
    p.add_argument("--artifacts", type=Path, default=Path("runs/artifacts"), help="export cache (shared)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name, device_table(Path(tmp_name), args.ssh, args.threads) as device:
        tmp = Path(tmp_name)
        cfg_path = tmp / "bench.toml"
        cfg_path.write_text(f'[paths]\nstore = "{tmp}/bench.sqlite"\nartifacts = "{args.artifacts.resolve()}"\n\n'
                            f'[measure]\n{MEASURE["quick" if args.quick else "full"]}\n\n{device}')
        cfg = harness_config.load(cfg_path)
        original = original_median(cfg, args.model)
        target = args.target or args.fraction * original
        cli = ["compress", "--model", args.model, "--weights", "random", "--target-latency", f"{target:.4f}ms",
               "--device", "bench", "--config", str(cfg_path), "--out", str(tmp / "out"), "--quiet"]
        code = bench_main(cli + (["--round-to", str(args.round_to)] if args.round_to else []))
        if code != 0:
            return code
        report = json.loads((tmp / "out" / "latency.json").read_text())

    where = "loopback sshd" if args.ssh else "local"
    print(f"\n{args.model}, .onnx on onnxruntime {args.threads} thread(s), {where}, "
          f"{'quick' if args.quick else 'full'} measurement; original median {original:.3f} ms")
    for i, a in enumerate(report["attempts"], 1):
        print(f"  attempt {i}: pattern {a['pattern']!r}, {a['macs'] / 1e9:.3f} GMACs: predicted "
              f"{a['predicted_ms']:.3f} ms, measured {a['measured_ms']:.3f} ms")
    print(f"target {target:.3f} ms | predicted {report['predicted_ms']:.3f} ms | measured "
          f"{report['measured_ms']:.3f} ms | error vs target {100 * report['error_vs_target']:+.1f} % | vs predicted "
          f"{100 * report['error_vs_predicted']:+.1f} %")
    hit = abs(report["error_vs_target"]) <= target_latency.TOLERANCE
    print(f"{'within' if hit else 'MISSES'} the {target_latency.TOLERANCE:.0%} goal")
    return 0 if hit else 1


if __name__ == "__main__":
    raise SystemExit(main())
