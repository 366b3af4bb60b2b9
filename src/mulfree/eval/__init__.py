"""Offline evaluation: perplexity, LAMBADA and zero-shot multiple choice, lm-eval style.

`evaluate(model, tokenizer=None, cfg=EvalConfig(...), lmul=LMulConfig(...))` is the Python entry
point; `mulfree eval` is the same from the command line.
"""

from mulfree.eval.data import fetch_eval_data, find_data_root
from mulfree.eval.harness import (
    EvalConfig,
    comparison_table,
    evaluate,
    load_model,
    markdown,
    read_results,
)
from mulfree.eval.scorer import loglikelihoods, score_token_pairs, text_perplexity
from mulfree.eval.tasks import TASKS, Request

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
