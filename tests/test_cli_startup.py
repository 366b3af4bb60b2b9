"""The `mulfree` command answers --help and usage errors without importing torch/transformers.

Every feature package serves its public names lazily (mulfree/_lazy.py) and the registration
with transformers waits for transformers' Auto classes to load (mulfree/__init__.py):
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


def test_import_mulfree_is_light_and_registers_when_transformers_loads():
    # `import mulfree` imports neither torch nor transformers ...
    assert _run("import sys, mulfree; print('torch' in sys.modules, 'transformers' in sys.modules)") == (
        "False False"
    )
    # ... and hgrn_bit is known to the Auto classes once they load, whichever comes first
    for first, then in (("import mulfree", "from transformers import AutoConfig"),
                        ("from transformers import AutoConfig", "import mulfree")):  # fmt: skip
        code = (
            f"{first}\n{then}\n"
            "from transformers import AutoModelForCausalLM\n"
            "cfg = AutoConfig.for_model('hgrn_bit', hidden_size=32, num_hidden_layers=1, vocab_size=64)\n"
            "print(type(cfg).__name__, type(AutoModelForCausalLM.from_config(cfg)).__name__)"
        )
        assert _run(code).splitlines()[-1] == "HGRNBitConfig HGRNBitForCausalLM", first


# Imports that load transformers' model code through a model module first: modeling_utils is half
# loaded when configuration_auto (and with it our hook) runs, so registering then would import
# our classes from a half-loaded transformers (the circular import these once raised).
@pytest.mark.parametrize(
    "first",
    [
        "import mulfree\nfrom transformers import BitNetForCausalLM",
        "import mulfree.engine.bitnet_model",
        "import mulfree\nfrom transformers import LlamaForCausalLM",
        "import mulfree.data.tokenizer\nimport transformers.modeling_utils",
    ],
)
def test_registration_survives_model_modules_imported_first(first):
    # registered as soon as the Auto classes are there (before anything else imports them), and
    # still so once they are used
    code = (
        f"{first}\n"
        "import sys\n"
        "def state():\n"
        "    auto = sys.modules.get('transformers.models.auto.modeling_auto')\n"
        "    if auto is None:\n"
        "        return 'no-auto'\n"
        "    return sorted(c.__name__ for c in auto.MODEL_FOR_CAUSAL_LM_MAPPING._extra_content)\n"
        "print(state())\n"
        "from transformers import AutoModelForCausalLM\n"
        "print(state())"
    )
    before, after = _run(code).splitlines()[-2:]
    want = "['HGRNBitConfig', 'PackedHGRNBitConfig']"
    assert before in ("no-auto", want), first
    assert after == want, first


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


def test_registration_after_importing_the_model_classes_first():
    # mulfree.models.mmfree registers at its end (it loads transformers' Auto modules on its way)
    code = (
        "from mulfree.models import HGRNBitConfig\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "print(sorted(CONFIG_MAPPING._extra_content))"
    )
    assert _run(code).splitlines()[-1] == "['hgrn_bit', 'hgrn_bit_packed']"
