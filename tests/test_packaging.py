"""Packaging: a build without a working C compiler says plainly that the fast core is missing
and how to get it (and still succeeds); the run-time warning says the same; the wheel scripts
and the cibuildwheel settings are there (scripts/check_wheel.sh builds and smoke-tests a wheel
in .ci/run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_build_without_a_compiler_says_the_core_is_missing(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "csrc", src / "csrc")
    shutil.copy(ROOT / "setup.py", src / "setup.py")
    env = {**os.environ, "CC": "/bin/false", "LDSHARED": "/bin/false"}
    r = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "tmp")],
        cwd=src, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mulfree: the compiled core (mulfree._C) was NOT built" in r.stderr
    assert "pip install --only-binary mulfree mulfree" in r.stderr
    assert "50x slower" in r.stderr and "-e ." not in r.stderr
    assert not list((tmp_path / "lib").rglob("_C*.so"))


def test_the_slow_path_warning_says_how_to_get_the_core():
    from mulfree.kernels._core import HOW_TO_GET_CORE

    assert "--only-binary mulfree" in HOW_TO_GET_CORE and "-e ." not in HOW_TO_GET_CORE


def test_wheel_scripts_and_cibuildwheel_settings_exist():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    cib = cfg["tool"]["cibuildwheel"]
    assert "cp311-*" in cib["build"] and "kernels.available()" in cib["test-command"]
    for name in ("build_wheel.sh", "check_wheel.sh"):
        assert os.access(ROOT / "scripts" / name, os.X_OK), name
    assert "scripts/check_wheel.sh" in (ROOT / ".ci" / "run").read_text()
    extras = cfg["project"]["optional-dependencies"]
    assert any(d.startswith("accelerate") for d in extras["models"])
    assert any(d.startswith("prometheus_client") for d in extras["serve"])


@pytest.mark.slow
def test_check_wheel_builds_installs_and_smoke_tests():
    r = subprocess.run(["bash", str(ROOT / "scripts" / "check_wheel.sh")], capture_output=True,
                       text=True, timeout=1800)  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "check_wheel: ok" in r.stdout
