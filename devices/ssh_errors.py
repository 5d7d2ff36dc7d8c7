"""The errors of the SSH transport, in one small module so that `devices.ssh` and `devices.ssh_config` share them.

Each carries a one-line message that names the device and says what to do;
`AgentRunError` also says at which stage the run failed.
"""

from __future__ import annotations

import socket

from devices.transport import TransportError


class SSHTransportError(TransportError):
    """Something prevented talking to the device (base class of this module's errors)."""


class SSHConnectError(SSHTransportError):
    """TCP connect, SSH handshake or authentication failed."""


class HostKeyError(SSHConnectError):
    """The server's host key is unknown (and not trusted) or has changed (never retried)."""


class SSHAuthError(SSHConnectError):
    """The server refused every key offered (never retried: trying again cannot help)."""


class SSHLinkError(SSHTransportError):
    """The connection was lost while a command ran (``reason`` without the device name; retryable)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.reason = reason


class WorkdirError(SSHTransportError):
    """The device's workdir cannot be created or written (read-only file system, permissions)."""


class BlobUploadError(SSHTransportError):
    """An upload failed (stalled, connection lost, disk full, no rename, no hasher)."""


class BlobMismatchError(BlobUploadError, ValueError):
    """The uploaded bytes do not hash to the expected sha256 (a ValueError, as the Transport contract says)."""


class AgentRunError(SSHTransportError):
    """The agent did not produce a result; ``stage`` is "transport" or "timeout"."""

    def __init__(self, stage: str, message: str, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.stage = stage
        self.stderr_tail = stderr_tail


def reason(e: BaseException) -> str:
    """A description of ``e`` that is never empty (``EOFError()`` and ``socket.timeout()`` have no text)."""
    if isinstance(e, socket.timeout):
        return "timed out"
    text = str(e).strip()
    if isinstance(e, EOFError):
        return "the connection was closed" + (f" ({text})" if text else "")
    return text or type(e).__name__
