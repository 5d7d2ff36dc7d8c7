"""Progress on the terminal: tqdm bars drawn from the library's progress callbacks.

The library (`harness`, `snp_core`) never prints; it tells a `harness.runner.Progress`
or a ``(done, total)`` callback what happens, and these classes show it.
"""

from __future__ import annotations

import sys
from typing import Callable

from tqdm.auto import tqdm

from harness.runner import Progress


class SweepBars(Progress):
    """One line naming the run, then one bar per device (disabled: only the line)."""

    def __init__(self, store: object, enabled: bool = True) -> None:
        self.store, self.enabled = store, enabled
        self.bars: dict[str, tqdm] = {}

    def planned(self, run_id: str, jobs: int, todo: int, devices: dict[str, int]) -> None:
        print(f"run {run_id}: {jobs} jobs on {len(devices)} device(s), {todo} to do; store {self.store}", flush=True)
        self.bars = {name: tqdm(total=count, desc=f"{name:>12}", unit="job", position=i, leave=True,
                                disable=not self.enabled)
                     for i, (name, count) in enumerate(devices.items())}

    def recorded(self, device: str, record: dict) -> None:
        bar = self.bars.get(device)
        if bar is not None:
            bar.set_postfix_str(f"{record['variant']} {record['format']} bs{record['batch_size']}: "
                                f"{record['status']}", refresh=False)
            bar.update()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def counter(desc: str, enabled: bool = True) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A ``(done, total)`` callback drawing one bar, and the function that closes it."""
    state: dict[str, tqdm] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr)
        state["bar"].n = done
        state["bar"].refresh()

    def close() -> None:
        if "bar" in state:
            state.pop("bar").close()

    return update, close
