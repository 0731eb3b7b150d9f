"""Where a result came from: package versions, code version, data, device, time.

A number in a report is only comparable with another if both were made by the same code
on the same data; this record is what lets a reader check that. Versions are read from
the installed distributions' metadata (no import: importing kfp alone takes seconds), the
code version from git when the library runs from a checkout, and the date is UTC so two
machines in different time zones write the same kind of stamp.
"""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "numpy", "pyarrow", "pandas", "matplotlib", "kfp")


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, None where it is not installed."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str | Path | None = None) -> dict[str, Any] | None:
    """The commit of the git checkout holding ``path`` (default: this library's source) and
    whether the working tree differs from it; None outside a checkout, without git, or in a
    repository without commits."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def lcron_version() -> str | None:
    """The library's version: the package attribute, else the installed distribution's."""
    import lcron

    version = getattr(lcron, "__version__", None)
    if version:
        return str(version)
    try:
        return metadata.version("lcron-pipelines")
    except metadata.PackageNotFoundError:
        return None


def utc_now() -> str:
    """The current time as an ISO-8601 UTC stamp with a trailing Z (seconds precision)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def collect(*, data_fingerprint: str | None = None, device: str | None = None,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance record written into evaluation outputs and reports."""
    record: dict[str, Any] = {
        "lcron_version": lcron_version(),
        "packages": package_versions(),
        "git": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "data_fingerprint": data_fingerprint,
        "device": device,
        "date_utc": utc_now(),
    }
    if extra:
        record.update(extra)
    return record
