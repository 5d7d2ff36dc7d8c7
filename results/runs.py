"""Which run a reading command (table, figures, compare, results, sweep --resume) works on.

One place for the rule, so every command answers the same way: a run by id, or
the aliases ``latest`` (also the default: the latest *sweep*, so the profile
and verification runs of ``bench compress --target-latency`` in the same store
never shadow it) and ``baseline``.  A run that cannot be found raises
:class:`results.store.StoreError` with a one-line message naming the recent
runs.
"""

from __future__ import annotations

from typing import Any, Mapping

from results.store import Store, StoreError


def is_sweep(run: Mapping[str, Any]) -> bool:
    """True for runs of ``bench sweep`` / ``bench nightly`` (``kind`` ``sweep``), False for the latency-profile
    and verification runs of ``bench compress --target-latency``."""
    return run.get("kind", "sweep") == "sweep"


def pick_run(store: Store, text: str | None, role: str = "") -> dict[str, Any]:
    """A run by id, or ``latest`` (the latest sweep; the default when `text` is None) or ``baseline``.

    `role` ("baseline", "candidate") names the run in the error message.
    """
    if text == "baseline":
        run = store.baseline()
        if run is None:
            raise StoreError(f"{store.path} has no baseline run yet; mark one with "
                             f"`python -m bench nightly --promote` or give a run id")
        return run
    if text in (None, "latest"):
        run = store.latest_run(kind="sweep")
        if run is None:
            raise StoreError(f"no sweep runs in {store.path}: run `python -m bench sweep` first")
        return run
    run = store.get_run(text)
    if run is None:
        recent = ", ".join(r["run_id"] for r in store.runs()[-5:]) or "none"
        raise StoreError(f"unknown {role + ' ' if role else ''}run {text!r} in {store.path}; recent runs: {recent}")
    return run


__all__ = ["is_sweep", "pick_run"]
