"""An arm64 Python userland under qemu user-mode emulation: a Raspberry Pi 4B stand-in for device tests.

Why: the benchmark's real targets are ARM boards, and the agent must work on
their Python, their onnxruntime build and their ``/proc/cpuinfo``. Without a
board, the closest real thing is the board's own software on an emulated CPU:

* Debian's arm64 CPython (``.deb`` packages fetched with ``apt-get download``
  and unpacked with ``dpkg -x`` into ``root/``, nothing installed on the host),
* PyPI's aarch64 wheels of onnxruntime and numpy (``pip install --target``
  into ``root/usr/local/lib/python3.X/dist-packages``, where ``pip install``
  puts them on a Debian-based Pi),
* a Raspberry Pi 4B ``/proc/cpuinfo`` and device-tree model at
  ``root/proc/...``: ``qemu-aarch64-static -L root`` looks every absolute path
  up under ``root`` first, so the emulated programs read these files instead of
  the host's x86 ones (qemu 7.2 emulates no ARM cpuinfo of its own); everything
  absent from ``root`` (``/proc/self``, ``/sys``, ``/tmp``) is the host's,
* ``python``, a shell wrapper: the device's ``python`` setting. It runs the
  interpreter under qemu with ``-0 <wrapper>`` so that ``sys.executable`` is
  the wrapper: the agent's cold-start child (``[sys.executable, agent.py]``)
  must be something the host kernel can execute, and without binfmt_misc an
  arm64 ELF is not.

Building downloads ~50 MB (9 MB of .debs, 39 MB of wheels; 188 MB unpacked); it is cached under
``$XDG_CACHE_HOME/snp-bench-aarch64/`` (default ``~/.cache``), one directory
per set of package versions, built in a private directory and renamed into
place (concurrent test runs never see half a userland).

Prerequisites: ``qemu-aarch64-static`` (``apt-get install qemu-user-static``),
arm64 in apt's lists (``dpkg --add-architecture arm64 && apt-get update``),
and the package registries. ``.ci/run`` provides all three when run as root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

#: Debian's arm64 interpreter (bookworm: 3.11, the project's Python too).
PYTHON_VERSION = "3.11"
#: The smallest set that runs the agent: the interpreter and its stdlib, hashlib/ssl (libssl3),
#: ctypes (libffi8), pyexpat (libexpat1), zlib, and onnxruntime's C++ runtime (libstdc++6, libgcc-s1).
#: The stdlib's other extension modules (sqlite3, readline, lzma, ...) stay unloadable: nothing imports them.
DEBIAN_PACKAGES = (
    f"python{PYTHON_VERSION}-minimal", f"libpython{PYTHON_VERSION}-minimal", f"libpython{PYTHON_VERSION}-stdlib",
    "libc6", "libexpat1", "zlib1g", "libssl3", "libffi8", "libstdc++6", "libgcc-s1",
)
#: The runtime the agent times and its one import-time dependency (onnxruntime's others are for tools).
WHEELS = {"onnxruntime": "1.32.0", "numpy": "2.4.6"}
#: Bumped whenever the layout below changes, so old caches are not reused.
LAYOUT = 1

#: /proc/cpuinfo of a Raspberry Pi 4B under a 64-bit kernel (Cortex-A72 = implementer 0x41, part 0xd08).
PI4B_CPUINFO = "".join(
    f"processor\t: {n}\n"
    "BogoMIPS\t: 108.00\n"
    "Features\t: fp asimd evtstrm crc32 cpuid\n"
    "CPU implementer\t: 0x41\n"
    "CPU architecture: 8\n"
    "CPU variant\t: 0x0\n"
    "CPU part\t: 0xd08\n"
    "CPU revision\t: 3\n"
    "\n"
    for n in range(4)
) + (
    "Hardware\t: BCM2835\n"
    "Revision\t: c03111\n"
    "Serial\t\t: 100000005ab1c2d3\n"
    "Model\t\t: Raspberry Pi 4 Model B Rev 1.1\n"
)
PI4B_MODEL = "Raspberry Pi 4 Model B Rev 1.1"


class Unavailable(Exception):
    """A prerequisite of the userland is missing here (qemu, arm64 apt lists, the registries)."""


@dataclass(frozen=True)
class Userland:
    """A built arm64 userland: ``python`` is what a device's ``python`` setting names."""

    root: pathlib.Path
    python: pathlib.Path
    packages: dict[str, str]  # Debian package -> version
    wheels: dict[str, str]    # PyPI project -> version


def cache_home() -> pathlib.Path:
    """Where built userlands are kept between test runs."""
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "snp-bench-aarch64"


def require_userland(cache: pathlib.Path | None = None) -> Userland:
    """The cached userland (built on first use), or skip - except on CI (``CI=true``), where it must fail."""
    try:
        return userland(cache or cache_home())
    except Unavailable as e:
        reason = f"arm64 userland unavailable: {e}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true requires the aarch64 device test to run")
        pytest.skip(reason)


def userland(cache: pathlib.Path) -> Userland:
    """The userland for the current package versions: from ``cache``, else built into it."""
    qemu = shutil.which("qemu-aarch64-static")
    if qemu is None:
        raise Unavailable("qemu-aarch64-static not found (apt-get install qemu-user-static)")
    packages = candidate_versions(DEBIAN_PACKAGES)
    key = hashlib.sha256(json.dumps([LAYOUT, packages, WHEELS, PI4B_CPUINFO]).encode()).hexdigest()[:16]
    final = cache / f"py{PYTHON_VERSION}-onnxruntime{WHEELS['onnxruntime']}-{key}"
    if not (final / "root").is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_builds(cache)
        with _build_dir(cache) as tmp:
            build(tmp / "root", packages, glibc=_glibc_version(packages["libc6"]))
            smoke_test(write_wrapper(tmp, qemu))  # a userland that cannot run the agent is never cached
            with contextlib.suppress(OSError):  # another test run may have finished the same build first
                os.rename(tmp, final)
    return Userland(root=final / "root", python=write_wrapper(final, qemu), packages=packages, wheels=dict(WHEELS))


def candidate_versions(names: tuple[str, ...]) -> dict[str, str]:
    """The version apt would download of each arm64 package (part of the cache key)."""
    if shutil.which("apt-cache") is None:
        raise Unavailable("apt-cache not found: the userland is built from Debian arm64 packages")
    done = subprocess.run(["apt-cache", "show", "--no-all-versions", *[f"{n}:arm64" for n in names]],
                          capture_output=True, text=True)
    found = dict(re.findall(r"^Package: (\S+)\n(?:.+\n)*?Version: (\S+)", done.stdout, re.MULTILINE))
    missing = [n for n in names if n not in found]
    if missing:
        raise Unavailable(f"apt knows no arm64 package {missing[0]!r} (dpkg --add-architecture arm64 && apt-get "
                          f"update, as .ci/run does as root; needs Debian with Python {PYTHON_VERSION}: bookworm)")
    return {n: found[n] for n in names}


def _glibc_version(libc6_version: str) -> tuple[int, int]:
    """(2, 36) from libc6's Debian version "2.36-9+deb12u14": which manylinux wheels the userland can load."""
    m = re.match(r"(\d+)\.(\d+)", libc6_version)
    if not m:
        raise RuntimeError(f"libc6:arm64 version {libc6_version!r} is not '<major>.<minor>-<debian revision>'")
    return int(m.group(1)), int(m.group(2))


def build(root: pathlib.Path, packages: dict[str, str], glibc: tuple[int, int]) -> None:
    """Unpack the .debs into ``root``, install the wheels, add the Pi's /proc files."""
    root.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="debs-", dir=root.parent) as debs:
        _run(["apt-get", "download", "-q", *[f"{n}:arm64={v}" for n, v in packages.items()]], cwd=debs,
             what="apt-get download of the arm64 packages")
        for deb in sorted(pathlib.Path(debs).glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(root)], what=f"dpkg-deb -x {deb.name}")
    site = root / "usr" / "local" / "lib" / f"python{PYTHON_VERSION}" / "dist-packages"
    platforms = [f"manylinux_2_{minor}_aarch64" for minor in range(17, glibc[1] + 1)] + ["manylinux2014_aarch64"]
    _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
          "--only-binary=:all:", "--target", str(site), "--python-version", PYTHON_VERSION, "--implementation", "cp",
          "--abi", "cp" + PYTHON_VERSION.replace(".", ""), *[a for p in platforms for a in ("--platform", p)],
          *[f"{name}=={version}" for name, version in WHEELS.items()]], what="pip install of the aarch64 wheels")
    # Empty, so that the host's x86 packages in these directories are not on the emulated sys.path.
    for shadow in ("usr/lib/python3/dist-packages", f"usr/lib/python{PYTHON_VERSION}/dist-packages"):
        (root / shadow).mkdir(parents=True, exist_ok=True)
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "proc" / "cpuinfo").write_text(PI4B_CPUINFO)
    (root / "proc" / "device-tree" / "model").write_text(PI4B_MODEL + "\0")


def write_wrapper(home: pathlib.Path, qemu: str) -> pathlib.Path:
    """``home/python``: ``home/root``'s interpreter as a host executable (rewritten each use: qemu may move).

    ``PYTHONHOME=/usr`` makes the interpreter find its stdlib at /usr (qemu maps it into root), not next to
    the wrapper; ``PYTHONNOUSERSITE`` keeps the host user's x86 packages off its path.
    """
    root = home / "root"
    interpreter = root / "usr" / "bin" / f"python{PYTHON_VERSION}"
    text = (
        "#!/bin/sh\n"
        f"# Debian arm64 CPython {PYTHON_VERSION} under qemu user-mode emulation (snp-bench tests/aarch64.py).\n"
        f"PYTHONHOME=/usr PYTHONNOUSERSITE=1 exec {shlex.quote(qemu)} -L {shlex.quote(str(root))} -0 \"$0\" "
        f"{shlex.quote(str(interpreter))} \"$@\"\n"
    )
    python = home / "python"
    tmp = home / f".python-{os.getpid()}-{secrets.token_hex(3)}"
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, python)
    return python


def smoke_test(python: pathlib.Path) -> None:
    """Fail with the interpreter's own error when the userland cannot run what the agent needs."""
    code = ("import ctypes, hashlib, json, platform, ssl, sys, numpy, onnxruntime; "
            "assert platform.machine() == 'aarch64', platform.machine(); "
            "assert sys.executable == sys.argv[1], (sys.executable, sys.argv[1])")
    done = subprocess.run([str(python), "-c", code, str(python)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"the arm64 userland built at {python.parent} does not work:\n"
                           f"{done.stderr.strip()}")


def _run(argv: list[str], *, what: str, cwd: str | None = None) -> None:
    """Run a build step; a failure is Unavailable (downloads) with the step's last error line."""
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or [f"exit status {done.returncode}"]
        raise Unavailable(f"{what} failed: {lines[-1]}")


@contextlib.contextmanager
def _build_dir(cache: pathlib.Path) -> Iterator[pathlib.Path]:
    """A private directory named after this process (see `_remove_abandoned_builds`), removed afterwards."""
    tmp = cache / f".build-{os.getpid()}-{secrets.token_hex(3)}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when renamed into place


def _remove_abandoned_builds(cache: pathlib.Path) -> None:
    """Delete build directories whose process died (a killed test run)."""
    for path in cache.glob(".build-*"):
        pid = path.name.split("-")[1]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(path, ignore_errors=True)
