"""Exit statuses of ``python -m bench``: one meaning each, so a script (or CI) can tell what happened.

======  ===========  ==========================================================================
status  name         meaning
======  ===========  ==========================================================================
0       OK           the command did what it was asked
1       CRASH        an unexpected exception: Python's traceback is printed; a bug to report
2       BAD_INPUT    bad flags, values, files or bench.toml: one ``error:`` line says what and why
3       JOB_FAILED   the work ran but part of it failed: a planned sweep / nightly job has no ok
                     record, or ``bench devices`` found a device unusable
4       REGRESSION   ``compare`` / ``nightly`` found a regression (takes precedence over 3)
130     INTERRUPTED  Ctrl-C (128 + SIGINT); 143 for SIGTERM (128 + SIGTERM)
======  ===========  ==========================================================================

Status 1 is never returned on purpose: it is what Python exits with when an
exception escapes, so it only ever means "crashed".
"""

from __future__ import annotations

OK = 0
CRASH = 1
BAD_INPUT = 2
JOB_FAILED = 3
REGRESSION = 4

#: The table above, as the top-level ``--help`` shows it.
EPILOG = ("exit status: 0 ok; 1 crash (a traceback: a bug to report); 2 bad input (one 'error:' line); "
          "3 a planned job (or device check) failed; 4 regression found (compare, nightly; wins over 3); "
          "130 / 143 interrupted by Ctrl-C / SIGTERM (128 + signal).")


def interrupted(signum: int) -> int:
    """The status of a command stopped by signal `signum`: 128 + its number, as shells report it."""
    return 128 + signum


def outcome(failed_jobs: int, regressed: bool = False) -> int:
    """The status of work that ran to its end: REGRESSION before JOB_FAILED before OK."""
    if regressed:
        return REGRESSION
    return JOB_FAILED if failed_jobs else OK
