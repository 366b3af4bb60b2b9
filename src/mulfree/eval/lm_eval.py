"""lm-evaluation-harness's own command line, with mulfree's model types known to transformers.

    mulfree lm-eval --model hf --model_args pretrained=DIR --tasks piqa
    python -m mulfree.eval.lm_eval --model hf --model_args pretrained=DIR --tasks piqa

`lm_eval --model hf` loads `AutoModelForCausalLM.from_pretrained(DIR)`, which knows `hgrn_bit`
(float MatMul-free checkpoints) and `hgrn_bit_packed` (packed directories) only after
`import mulfree` in the same process: this entry point does that, then hands every argument to
lm-eval unchanged (`pip install "mulfree[lm-eval]"`).
"""

from __future__ import annotations

import sys

from mulfree.errors import MulfreeError


def main(argv: list[str] | None = None) -> int:
    """Run lm-eval's CLI on `argv` (default: sys.argv[1:]); its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as e:
        raise MulfreeError(
            f"lm-eval is not installed ({e}); pip install 'mulfree[lm-eval]'"
        ) from None
    from transformers import AutoModelForCausalLM  # noqa: F401  (registers our model types)

    import mulfree  # noqa: F401

    old = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    return 0


if __name__ == "__main__":
    sys.exit(main())
