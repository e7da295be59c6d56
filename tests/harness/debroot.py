"""A clean Debian bookworm root for install tests, made once by debootstrap and cached.

`debootstrap --variant=minbase` with the packages a field image has (python3, python3-venv,
ca-certificates, systemd) builds the root from the Debian mirror into
/var/cache/sinyal/debootstrap-<key> (key: the suite and package list), the first time only:
a few minutes. Each test gets a fresh, writable view of it through an overlay mount (the
cache stays clean) with /proc, /sys and /dev mounted, and a wheelhouse of the agent's
dependencies built on the host (cached too) so that pip inside the root needs no network.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_root, require_tool

CACHE = Path(os.environ.get("SINYAL_TEST_CACHE", "/var/cache/sinyal"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "ca-certificates", "systemd", "iproute2")


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def cached_root() -> Path:
    """The debootstrapped root (built when missing; atomic: a half-built root is never used)."""
    path = CACHE / f"debootstrap-{SUITE}-{_key(SUITE, *PACKAGES)}"
    if path.is_dir():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="debootstrap-build-", dir=CACHE))
    try:
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
             str(build), MIRROR],
            check=True, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        build.rename(path)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return path


def wheelhouse() -> Path:
    """Wheels of the agent extra's dependencies and the build backend, for `pip --no-index`.
    Built with the host's pip from PyPI once per dependency list; the project itself is not
    in it (install.sh builds it from the checkout)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    path = CACHE / f"wheelhouse-{_key(pyproject, sys.version)}"
    if path.is_dir():
        return path
    build = Path(tempfile.mkdtemp(prefix="wheelhouse-build-", dir=CACHE))
    try:
        # The dependencies as pyproject.toml states them (not the project: building it here
        # would leave build/ in the checkout), plus the build backend for install.sh's build.
        project = tomllib.loads(pyproject)["project"]
        requirements = [
            *project["dependencies"],
            *project["optional-dependencies"]["agent"],
            *tomllib.loads(pyproject)["build-system"]["requires"],
        ]
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "wheel", "--wheel-dir", str(build), *requirements],
                       check=True, capture_output=True, text=True, timeout=1200)  # fmt: skip
        build.rename(path)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return path


def _sh(*cmd: str) -> None:
    subprocess.run(list(cmd), check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="session")
def debian_root() -> tuple[Path, Path]:
    """(cached debootstrap root, wheelhouse), made once per machine and reused by every
    session (the first run takes minutes, later ones nothing)."""
    require_root()
    for tool in ("debootstrap", "chroot", "mount"):
        require_tool(tool)
    return cached_root(), wheelhouse()


@contextlib.contextmanager
def fresh_root(work: Path, lower: Path, wheels: Path) -> Iterator[Path]:
    """A writable root over the cached one, with /proc, /sys, /dev, the checkout in /src and
    the wheelhouse in /wheels; everything is unmounted afterwards, whatever happens."""
    upper, workdir, merged = work / "upper", work / "work", work / "root"
    for d in (upper, workdir, merged):
        d.mkdir(parents=True)
    mounted: list[Path] = []
    try:
        _sh("mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={lower},upperdir={upper},workdir={workdir}", str(merged))  # fmt: skip
        mounted.append(merged)
        for src, dst, opts in (("proc", "proc", ["-t", "proc"]), ("sysfs", "sys", ["-t", "sysfs"]),
                               ("/dev", "dev", ["--bind"])):  # fmt: skip
            _sh("mount", *opts, src, str(merged / dst))
            mounted.append(merged / dst)
        (merged / "src").mkdir()
        tar = subprocess.Popen(
            ["tar", "-C", str(ROOT), "--exclude=./.venv", "--exclude=./.git", "--exclude=./var",
             "--exclude=__pycache__", "--exclude=*.egg-info", "--exclude=./build", "-cf", "-",
             "."],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        subprocess.run(["tar", "-C", str(merged / "src"), "-xf", "-"], stdin=tar.stdout,
                       check=True, timeout=120)  # fmt: skip
        tar.wait(60)
        (merged / "wheels").mkdir()
        _sh("mount", "--bind", "-o", "ro", str(wheels), str(merged / "wheels"))
        mounted.append(merged / "wheels")
        yield merged
    finally:
        unmounted = True
        for m in reversed(mounted):
            done = subprocess.run(["umount", "-l", str(m)], capture_output=True, timeout=60)
            unmounted = unmounted and done.returncode == 0
        if unmounted:  # the upper layer holds a venv: about 100 MB per run
            shutil.rmtree(upper, ignore_errors=True)
