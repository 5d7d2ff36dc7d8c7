"""The one error type of the exporters stage.

Every failure (unknown format, an exporter crash, a parity miss, a graph that
fails ``onnx.checker``) is an `ExportError` with a single-line message, because
the sweep driver prints it in a progress line and stores it in an error record:
a multi-line torch traceback there would be unreadable and would break the
one-row-per-failure contract of the results stage.
"""

from __future__ import annotations


class ExportError(Exception):
    """An export that did not produce a trustworthy artifact; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (torch errors can be pages long)."""
    for line in str(exc).splitlines():
        if line.strip():
            return f"{type(exc).__name__}: {line.strip()}"
    return type(exc).__name__
