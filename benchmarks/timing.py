"""Timing shared by the benchmark scripts: several callables interleaved round by round in one process.

Interleaving puts every variant under the same drift of a shared machine, so ratios
measured within a round hold up where milliseconds across runs do not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(runners: dict[str, Callable[[], object]], rounds: int, round_s: float) -> dict[str, list[float]]:
    """Per round, the median seconds per call of each runner (about `round_s` of calls); the order alternates.

    Each runner's block in a round starts with one untimed call (as the device agent re-warms each member), so
    no model pays for the caches and idle threads the one before it left.
    """
    iters = {}
    for name, fn in runners.items():
        fn()
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        iters[name] = max(2, round(round_s / ((time.perf_counter() - t0) / 3)))
    names, samples = list(runners), {k: [] for k in runners}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, calls = runners[name], []
            fn()
            for _ in range(iters[name]):
                t0 = time.perf_counter()
                fn()
                calls.append(time.perf_counter() - t0)
            samples[name].append(statistics.median(calls))
    return samples
