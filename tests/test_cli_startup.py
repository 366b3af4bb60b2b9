"""The `mulfree` command answers --help and usage errors without importing torch/transformers.

Every feature package serves its public names lazily (mulfree/_lazy.py) and the console script
defers the transformers registration to after parsing (mulfree/__init__.py, mulfree.cli.main):
importing them took ~10 s on the 2-core dev machine for `mulfree --help`.
"""

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_parser_builds_without_torch_or_transformers():
    code = (
        "import sys; sys.argv = ['mulfree']\n"
        "import mulfree.cli as c\n"
        "c.build_parser()\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    assert _run(code) == "False False"


def test_console_script_registers_before_running_a_command():
    code = (
        "import sys; sys.argv = ['mulfree']\n"
        "import mulfree.cli as c\n"
        "from transformers import AutoConfig\n"
        "try:\n"
        "    AutoConfig.for_model('hgrn_bit')\n"
        "    print('registered early')\n"
        "except ValueError:\n"
        "    pass\n"
        "rc = c.main(['lmul', 'matmul', '--shape-a', '4,8', '--shape-b', '8,4'])\n"
        "print(type(AutoConfig.for_model('hgrn_bit')).__name__, rc)"
    )
    out = _run(code)
    assert "registered early" not in out  # the console script deferred it ...
    assert out.splitlines()[-1] == "HGRNBitConfig 0"  # ... and main() did it


@pytest.mark.parametrize(
    "package, name",
    [("mulfree.engine", "convert"), ("mulfree.eval", "evaluate"), ("mulfree.lmul", "lmatmul")],
)
def test_lazy_names_resolve_to_the_objects(package, name):
    import importlib
    import inspect

    pkg = importlib.import_module(package)
    if name == "convert":  # importing the submodule of that name must not shadow the function
        importlib.import_module(f"{package}.{name}")
    obj = getattr(pkg, name)
    assert inspect.isfunction(obj) and obj.__name__ == name  # not a submodule of that name
    assert name in dir(pkg)
    with pytest.raises(AttributeError):
        pkg.no_such_name  # noqa: B018
