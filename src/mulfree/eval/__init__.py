"""Offline evaluation: perplexity, LAMBADA and zero-shot multiple choice, lm-eval style.

`evaluate(model, tokenizer=None, cfg=EvalConfig(...), lmul=LMulConfig(...))` is the Python entry
point; `mulfree eval` is the same from the command line.
"""

from mulfree._lazy import attach

_NAMES = {
    "fetch_eval_data": "mulfree.eval.data",
    "find_data_root": "mulfree.eval.data",
    "EvalConfig": "mulfree.eval.harness",
    "comparison_table": "mulfree.eval.harness",
    "evaluate": "mulfree.eval.harness",
    "load_model": "mulfree.eval.harness",
    "markdown": "mulfree.eval.harness",
    "read_results": "mulfree.eval.harness",
    "loglikelihoods": "mulfree.eval.scorer",
    "score_token_pairs": "mulfree.eval.scorer",
    "text_perplexity": "mulfree.eval.scorer",
    "TASKS": "mulfree.eval.tasks",
    "Request": "mulfree.eval.tasks",
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = [
    "TASKS",
    "EvalConfig",
    "Request",
    "comparison_table",
    "evaluate",
    "fetch_eval_data",
    "find_data_root",
    "load_model",
    "loglikelihoods",
    "markdown",
    "read_results",
    "score_token_pairs",
    "text_perplexity",
]
