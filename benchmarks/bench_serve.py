"""Serving throughput and latency of `mulfree serve` on loopback, with N concurrent streaming clients.

For N = 1, 4, 16 clients, each client sends streaming completions (fixed max_tokens, ignore_eos)
back to back for a bounded time; we report aggregate generated tokens/s, p50/p99 time to first
token (TTFT), p50/p99 per-token latency (gaps between streamed tokens, averaged within each
request: (t_last - t_first) / (tokens - 1)), and the server's peak RSS. Two servers are measured:

  mmfree   the batched MatMul-free backend: one decode step for all active requests
  generic  the named baseline: the same model served one request per decode step (what the
           generic Hugging Face backend does for any causal LM)

and the table ends with the batched/baseline tokens/s ratio per N. Default model: a MatMul-free
preset with random weights (no bundled model exists yet) and a byte-level BPE tokenizer trained
on this repository's Python sources; pass --model DIR to serve a real model directory instead.
All traffic goes to 127.0.0.1; every loop is bounded in time and count.

    python benchmarks/bench_serve.py                          # preset "small", 15 s per N
    python benchmarks/bench_serve.py --quick                  # ~1 min: N = 1/4/16, 3 s per N
    python benchmarks/bench_serve.py --preset tiny --seconds 5 --clients 1 4

`--vs TREE` also serves the same model from another checkout of mulfree (its `src` on the
server's PYTHONPATH; e.g. a `git worktree` of an older commit, its compiled core built there):
both servers stay up, the client counts alternate between them (ours, then theirs, per N) so
both see the same drift of a shared machine, and the table ends with ours / theirs per N.

    python benchmarks/bench_serve.py --backends mmfree --clients 1 4 16 64 --vs ../before

`--quick` is a smoke-sized run of the same table (a smaller tokenizer, 3 s and 32 tokens per
request at each N): ratios between the two backends are meaningful, absolute figures less so;
any option given explicitly wins over the quick value.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# option -> (full run, --quick) values; an option given on the command line wins over both
RUNS = {
    "vocab": (8192, 2048),
    "clients": ([1, 4, 16], [1, 4, 16]),
    "seconds": (15.0, 3.0),
    "max_tokens": (64, 32),
}
PROMPT = "The MatMul-free language model keeps a constant-size recurrent state, so"


def build_model_dir(preset: str, out: Path, vocab: int) -> Path:
    """Random-weight MatMul-free preset + a BPE tokenizer trained on the repo's sources."""
    import torch

    from mulfree.data.tokenizer import EOS_TOKEN, save_hf_tokenizer, train_bpe_tokenizer
    from mulfree.models import HGRNBitConfig, HGRNBitForCausalLM

    docs = [p.read_text(errors="replace") for p in sorted((REPO / "src").rglob("*.py"))]
    tok = train_bpe_tokenizer(docs, vocab_size=vocab)
    torch.manual_seed(0)
    cfg = HGRNBitConfig.from_name(
        preset, vocab_size=tok.get_vocab_size(), eos_token_id=0, bos_token_id=0
    )
    HGRNBitForCausalLM(cfg).save_pretrained(str(out))
    save_hf_tokenizer(tok, EOS_TOKEN, out)
    return out


class Server:
    """`mulfree serve` in a subprocess on a free loopback port."""

    def __init__(
        self, model_dir: Path, backend: str, threads: int | None, max_batch: int, weights: str,
        tree: Path | None = None,
    ):
        cmd = [
            sys.executable,
            "-m",
            "mulfree.cli",
            "serve",
            str(model_dir),
            "--port",
            "0",
            "--backend",
            backend,
            "--max-batch",
            str(max_batch),
            "--max-queue",
            "64",
            "--log-level",
            "warning",
            "--model-id",
            "bench",
            "--weights",
            weights,
        ]
        if threads:
            cmd += ["--threads", str(threads)]
        env = None
        if tree is not None:  # another checkout's mulfree (its src first on the path)
            env = dict(os.environ, PYTHONPATH=str(tree / "src"))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
        line = self.proc.stdout.readline()
        m = re.search(r"http://(127\.0\.0\.1):(\d+)", line)
        if not m:
            self.proc.kill()
            raise SystemExit(f"server did not start: {line!r}")
        self.host, self.port = m.group(1), int(m.group(2))
        self.banner = line.strip()

    def status(self, key: str) -> int:
        """A /proc/PID/status field in kB (VmHWM = peak RSS, VmRSS = current)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def metrics(self) -> dict[str, float]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name.split("{")[0]] = float(value)
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def stream_once(host: str, port: int, max_tokens: int, seed: int) -> dict:
    """One streaming completion; times of the first and last token and the token count."""
    body = json.dumps(
        {
            "model": "bench",
            "prompt": PROMPT,
            "max_tokens": max_tokens,
            "seed": seed,
            "temperature": 1.0,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
    )
    conn = http.client.HTTPConnection(host, port, timeout=120)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        conn.close()
        return {"status": resp.status}
    t_first = t_last = None
    tokens = 0
    buf = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            data = event[6:]
            if data == b"[DONE]":
                continue
            msg = json.loads(data)
            if msg.get("usage"):
                tokens = msg["usage"]["completion_tokens"]
            if msg.get("choices") and msg["choices"][0]["text"]:
                now = time.perf_counter()
                t_first = t_first or now
                t_last = now
    conn.close()
    return {
        "status": 200,
        "t0": t0,
        "ttft": (t_first or t_last or t0) - t0,
        "per_token": (t_last - t_first) / (tokens - 1) if tokens > 1 and t_first else None,
        "tokens": tokens,
        "t_end": time.perf_counter(),
    }


def run_load(server: Server, clients: int, seconds: float, max_tokens: int) -> dict:
    """`clients` threads send requests back to back until `seconds` pass; in-flight ones finish."""
    results: list[dict] = []
    lock = threading.Lock()
    t_start = time.perf_counter()
    t_stop = t_start + seconds

    def client(i: int) -> None:
        k = 0
        while time.perf_counter() < t_stop and k < 10_000:
            r = stream_once(server.host, server.port, max_tokens, seed=i * 10_000 + k)
            with lock:
                results.append(r)
            k += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    ok = [r for r in results if r["status"] == 200]
    ttft = sorted(r["ttft"] for r in ok)
    per_tok = sorted(r["per_token"] for r in ok if r["per_token"] is not None)
    return {
        "clients": clients,
        "requests": len(ok),
        "errors": len(results) - len(ok),
        "tokens": sum(r["tokens"] for r in ok),
        "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "ttft_p50_ms": 1e3 * pct(ttft, 50),
        "ttft_p99_ms": 1e3 * pct(ttft, 99),
        "tok_p50_ms": 1e3 * pct(per_tok, 50),
        "tok_p99_ms": 1e3 * pct(per_tok, 99),
        "wall_s": wall,
    }


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[min(98, max(0, int(q) - 1))]


def measure(server: Server, backend: str, n: int, args) -> dict:
    """One load run of n clients against `server`, with the server-side figures."""
    m0 = server.metrics()
    row = run_load(server, n, args.seconds, args.max_tokens)
    m1 = server.metrics()
    steps = m1["mulfree_decode_steps_total"] - m0["mulfree_decode_steps_total"]
    gen = m1["mulfree_generated_tokens_total"] - m0["mulfree_generated_tokens_total"]
    # Each request's first token comes from its prefill, the rest from steps.
    row["mean_batch"] = (gen - row["requests"]) / steps if steps else float("nan")
    if backend == "generic":
        row["mean_batch"] = 1.0
    row["peak_rss_mb"] = server.status("VmHWM") / 1024
    row["energy_pj_per_token"] = m1.get("mulfree_energy_per_token_picojoules")
    return row


def print_rows(rows: list[dict]) -> None:
    print(
        "| N | requests | tok/s | TTFT p50 ms | TTFT p99 ms | tok p50 ms | tok p99 ms "
        "| mean batch | peak RSS MB | est. µJ/token |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        e = r["energy_pj_per_token"]
        print(
            f"| {r['clients']} | {r['requests']} | {r['tokens_per_s']:.1f} | "
            f"{r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | {r['tok_p50_ms']:.1f} | "
            f"{r['tok_p99_ms']:.1f} | {r['mean_batch']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{e / 1e6 if e else float('nan'):.2f} |"
        )
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: a random preset)")
    ap.add_argument(
        "--preset", default="small", help="MatMul-free preset when --model is not given"
    )
    ap.add_argument("--quick", action="store_true",
                    help="a ~1 minute run: " + ", ".join(f"{k}={v[1]}" for k, v in RUNS.items()))
    ap.add_argument("--vocab", type=int, default=None,
                    help=f"tokenizer vocabulary for the preset (default {RUNS['vocab'][0]})")
    ap.add_argument("--clients", type=int, nargs="+", default=None,
                    help=f"client counts N (default {' '.join(map(str, RUNS['clients'][0]))})")
    ap.add_argument("--seconds", type=float, default=None,
                    help=f"load time per client count (default {RUNS['seconds'][0]:g})")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help=f"tokens per request (default {RUNS['max_tokens'][0]})")
    ap.add_argument("--threads", type=int, default=None, help="server torch threads")
    ap.add_argument(
        "--backends", nargs="+", default=["mmfree", "generic"], choices=["mmfree", "generic"]
    )
    ap.add_argument(
        "--weights",
        default="auto",
        choices=["auto", "packed", "float"],
        help="served weights (auto: packed ternary when the compiled kernels are built)",
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--vs", type=Path, default=None, metavar="TREE",
                    help="also serve from this mulfree checkout, alternating per N (a baseline)")
    args = ap.parse_args()
    for name, values in RUNS.items():
        if getattr(args, name) is None:
            setattr(args, name, values[1] if args.quick else values[0])
    t_run = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = (
            Path(args.model)
            if args.model
            else build_model_dir(
                args.preset, Path(tmp) / f"mmfree-{args.preset}-random", args.vocab
            )
        )
        what = args.model or f"preset {args.preset} (random weights)"
        print(
            f"model: {what}; {args.max_tokens} tokens per request; {args.seconds:g} s per N; "
            f"server threads: {args.threads or 'torch default'}"
            + ("; --quick" if args.quick else "") + "\n"
        )
        if args.vs is not None and not (args.vs / "src" / "mulfree").is_dir():
            raise SystemExit(f"--vs {args.vs}: not a mulfree checkout (no src/mulfree)")
        trees = {"": None} | ({" (vs)": args.vs.resolve()} if args.vs is not None else {})
        table: dict[str, list[dict]] = {}
        for backend in args.backends:
            servers = {}
            try:
                for tag, tree in trees.items():
                    servers[tag] = Server(model_dir, backend, args.threads,
                                          max_batch=max(args.clients), weights=args.weights,
                                          tree=tree)  # fmt: skip
                    stream_once(servers[tag].host, servers[tag].port, 4, seed=0)  # warm-up
                idle = {tag: srv.status("VmRSS") for tag, srv in servers.items()}
                rows = {tag: [] for tag in servers}
                for n in args.clients:
                    for tag, server in servers.items():  # alternating: the same drift for both
                        rows[tag].append(measure(server, backend, n, args))
                for tag, server in servers.items():
                    table[backend + tag] = rows[tag]
                    where = f" from {trees[tag]}" if trees[tag] else ""
                    print(f"## {backend} backend{where} (idle RSS {idle[tag] / 1024:.0f} MB)")
                    print(server.banner)
                    print_rows(rows[tag])
            finally:
                for server in servers.values():
                    server.stop()
        if "mmfree" in table and "generic" in table:
            print("## batched (mmfree) / one-request-per-step (generic) aggregate tokens/s")
            for a, b in zip(table["mmfree"], table["generic"], strict=True):
                print(f"N={a['clients']}: {a['tokens_per_s'] / b['tokens_per_s']:.2f}x")
        for backend in args.backends:
            if backend + " (vs)" in table:
                print(f"## {backend}: this tree / {args.vs} aggregate tokens/s (alternating runs)")
                for a, b in zip(table[backend], table[backend + " (vs)"], strict=True):
                    print(f"N={a['clients']}: {a['tokens_per_s'] / b['tokens_per_s']:.2f}x "
                          f"({a['tokens_per_s']:.1f} vs {b['tokens_per_s']:.1f} tok/s)")  # fmt: skip
        print(f"\n(whole run: {time.perf_counter() - t_run:.0f} s)")
        if args.json:
            Path(args.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
