#!/usr/bin/env bash
# Install a built wheel into a fresh venv and smoke-test it: the compiled core loads from the
# wheel (with its bundled libgomp), `mulfree --help` and `mulfree generate` on the bundled
# model work, from a directory outside the source tree.
#
#   bash scripts/check_wheel.sh [WHEEL]     # default: build one with scripts/build_wheel.sh
#
# The venv sees this environment's site-packages for the heavy dependencies (torch,
# transformers: the wheel is installed with --no-deps), but mulfree itself comes from the
# wheel: the check fails if Python imports any other copy.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
wheel=${1:-}
if [ -z "$wheel" ]; then
    bash scripts/build_wheel.sh "$work/dist" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
    wheel=$(ls "$work"/dist/mulfree-*manylinux*.whl)
fi
case "$wheel" in *manylinux*) ;; *) echo "check_wheel: $wheel is not a manylinux wheel" >&2; exit 1;; esac
"$PY" -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install -q --no-deps "$wheel"
cd "$work"  # away from src/: only the installed wheel can be imported
"$work/venv/bin/python" - "$work/venv" <<'PYEOF'
import os, subprocess, sys
venv = os.path.realpath(sys.argv[1])
import mulfree, mulfree._C
from mulfree import kernels
for mod in (mulfree, mulfree._C):
    assert os.path.realpath(mod.__file__).startswith(venv), f"{mod.__name__} from {mod.__file__}"
assert kernels.available(), kernels.load_error()
ldd = subprocess.run(["ldd", mulfree._C.__file__], capture_output=True, text=True).stdout
gomp = [line for line in ldd.splitlines() if "gomp" in line]
assert gomp and "mulfree.libs" in gomp[0], f"libgomp not the bundled one: {gomp}"
print("check_wheel: core", kernels.isa_max(), "|", gomp[0].split("=>")[1].split("(")[0].strip())
PYEOF
"$work/venv/bin/mulfree" --help >/dev/null
text=$("$work/venv/bin/mulfree" generate -p "ROMEO:" -n 8 --temp 0 --quiet)
[ -n "${text//[[:space:]]/}" ] || { echo "check_wheel: generate printed nothing" >&2; exit 1; }
echo "check_wheel: ok ($(basename "$wheel"))"
