"""Progress on the terminal: tqdm bars drawn from the library's progress callbacks.

The library (`harness`, `snp_core`) never prints; it tells a `harness.runner.Progress`
or a ``(done, total)`` callback what happens, and these classes show it. Every bar
and line goes to stderr. ``disable`` is tqdm's: None draws bars only when stderr is
a terminal (never carriage returns in a CI log), True never (``--quiet``); see
`bench.options.bar_disable`. Imported by a command's ``run`` only: it pulls in the
harness (and so torch), which ``--help`` must not.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from harness.compress import CompressProgress
from harness.runner import Progress

#: Upload bytes arrive per SFTP chunk; the bar shows them this often at most.
UPLOAD_REDRAW_S = 0.25


#: A context in which log lines (the library's INFO / WARNING / ERROR on stderr) print above the bars, not through them.
logging_above_bars = logging_redirect_tqdm


class SweepBars(Progress):
    """One line naming the run, a bar for the exports on the host, then one bar per device."""

    def __init__(self, store: object, disable: bool | None = None, say: Callable[[str], None] | None = None) -> None:
        self.store, self.disable = store, disable
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.bars: dict[str, tqdm] = {}
        self.export_bar: tqdm | None = None
        self.devices: dict[str, int] = {}
        self._drawn: dict[str, float] = {}

    def planned(self, run_id: str, jobs: int, todo: int, devices: dict[str, int]) -> None:
        self.say(f"run {run_id}: {jobs} jobs on {len(devices)} device(s), {todo} to do; store {self.store}")
        self.devices = devices

    def exported(self, done: int, total: int) -> None:
        if self.export_bar is None and done < total:
            self.export_bar = tqdm(total=total, desc=f"{'export':>12}", unit="artifact", disable=self.disable,
                                   file=sys.stderr, leave=False)
        if self.export_bar is not None:
            self.export_bar.n = done
            self.export_bar.refresh()
            if done >= total:
                self.export_bar.close()
                self.export_bar = None
        if done >= total:
            self._device_bars()

    def exporting(self, what: str) -> None:
        if self.export_bar is not None:
            self.export_bar.set_postfix_str(what, refresh=True)

    def _device_bars(self) -> None:
        """The measurement bars, one per device, once the host has made every artifact."""
        if not self.bars:
            self.bars = {name: tqdm(total=count, desc=f"{name:>12}", unit="job", position=i, leave=True,
                                    disable=self.disable, file=sys.stderr)
                         for i, (name, count) in enumerate(self.devices.items())}

    def uploading(self, device: str, what: str, done: int, total: int) -> None:
        """The upload's bytes in the device bar's postfix, redrawn at most every `UPLOAD_REDRAW_S` (chunks are many)."""
        bar = self.bars.get(device)
        now = time.monotonic()
        if bar is None or (done < total and now - self._drawn.get(device, 0.0) < UPLOAD_REDRAW_S):
            return
        self._drawn[device] = now
        bar.set_postfix_str(f"uploading {what}: {done / 1e6:.1f} of {total / 1e6:.1f} MB")

    def recorded(self, device: str, record: dict) -> None:
        self._device_bars()  # records of failed exports arrive before the devices start
        bar = self.bars.get(device)
        if bar is not None:
            bar.set_postfix_str(f"{record['variant']} {record['format']} bs{record['batch_size']}: "
                                f"{record['status']}", refresh=False)
            bar.update()

    def close(self) -> None:
        if self.export_bar is not None:
            self.export_bar.close()
            self.export_bar = None
        for bar in self.bars.values():
            bar.close()
        self.bars = {}


class CompressBars(SweepBars, CompressProgress):
    """``bench compress``: a bar for calibration, and the sweep bars for the timing runs of a latency budget."""

    def __init__(self, disable: bool | None = None, say: Callable[[str], None] | None = None) -> None:
        super().__init__("", disable, say)
        self.calibrating, self._close_calibration = counter("calibrating", disable)

    def planned(self, run_id: str, jobs: int, todo: int, devices: dict[str, int]) -> None:
        self.close()
        super().planned(run_id, jobs, todo, devices)

    def close(self) -> None:
        self._close_calibration()
        super().close()


def counter(desc: str, disable: bool | None = None) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A ``(done, total)`` callback drawing one bar on stderr, and the function that closes it."""
    state: dict[str, tqdm] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, disable=disable, file=sys.stderr)
        state["bar"].n = done
        state["bar"].refresh()

    def close() -> None:
        if "bar" in state:
            state.pop("bar").close()

    return update, close
