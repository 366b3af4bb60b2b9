"""Replay the hostile-and-careless server load of issue 17 against `mulfree serve` on loopback.

Starts `mulfree serve` (default flags; the bundled model unless --model DIR) in a subprocess and
sends, all to 127.0.0.1, every phase bounded in count and time:

  load       N streaming completions at once (default 200; max_batch 16 + max_queue 64 means
             the rest are 429s, as designed)
  big        8 concurrent 1 MB prompts (refused by the byte cap before tokenizing)
  hostile    a cross-site text/plain POST with a foreign Origin, a DNS-rebinding Host, a lone
             surrogate, 100,000-deep JSON
  slow       S clients sending a body one byte every 2 s (cut off by --body-timeout)
  drop       D clients that disconnect mid-body (one log line each expected)

and prints requests by phase and status, p50/p99 latency, the server's RSS before and after,
and the server's log lines per dropped client.

    python benchmarks/probe_serve.py                    # 200 clients, bundled model
    python benchmarks/probe_serve.py --clients 50 --slow 20 --drop 20
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


class Server:
    def __init__(self, model: str | None, body_timeout: float):
        cmd = [sys.executable, "-m", "mulfree.cli", "serve", "--port", "0",
               "--body-timeout", str(body_timeout), "--energy-table", "none"]  # fmt: skip
        if model:
            cmd.insert(4, model)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"http://(127\.0\.0\.1):(\d+)", line)
        if not m:
            self.proc.kill()
            raise SystemExit(f"server did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.host, self.port = m.group(1), int(m.group(2))
        self.log: list[str] = []
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self):
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def post(s: Server, path: str, body: bytes, headers: dict, timeout: float, stream=False):
    """(status, seconds) of one request; the whole (streamed) response is read."""
    t0 = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(s.host, s.port, timeout=timeout)
        conn.request("POST", path, body, {"Content-Type": "application/json", **headers})
        r = conn.getresponse()
        while r.read(65536):
            pass
        conn.close()
        return r.status, time.perf_counter() - t0
    except (OSError, http.client.HTTPException) as e:
        return f"error:{type(e).__name__}", time.perf_counter() - t0


def run_parallel(n: int, fn, deadline: float) -> list:
    out, threads = [None] * n, []

    def work(i):
        out[i] = fn(i)

    for i in range(n):
        t = threading.Thread(target=work, args=(i,), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return [r if r is not None else ("unfinished", float("nan")) for r in out]


def slow_client(s: Server, limit_s: float):
    t0 = time.perf_counter()
    sock = socket.create_connection((s.host, s.port), timeout=limit_s)
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            b"\r\nContent-Length: 100000\r\n\r\n{")  # fmt: skip
    got = b""
    try:
        sock.sendall(head)
        sock.settimeout(2.0)
        while time.perf_counter() - t0 < limit_s:
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
            except TimeoutError:
                sock.sendall(b" ")  # one byte every 2 s
    except OSError:
        pass
    finally:
        sock.close()
    m = re.match(rb"HTTP/1.1 (\d+)", got)
    return (int(m.group(1)) if m else "held/closed"), time.perf_counter() - t0


def drop_client(s: Server):
    t0 = time.perf_counter()
    sock = socket.create_connection((s.host, s.port), timeout=5)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                 b"application/json\r\nContent-Length: 500\r\n\r\n{\"prompt\": \"")  # fmt: skip
    sock.close()
    return "dropped", time.perf_counter() - t0


def report(phase: str, results: list) -> None:
    by = collections.Counter(str(st) for st, _ in results)
    lat = sorted(t for _, t in results if t == t)
    p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: float("nan"))
    print(f"| {phase} | {len(results)} | {', '.join(f'{k}: {v}' for k, v in sorted(by.items()))} "
          f"| {statistics.median(lat) if lat else float('nan'):.2f} | {p(0.99):.2f} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    ap.add_argument("--clients", type=int, default=200, help="concurrent streaming clients")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--slow", type=int, default=50, help="slow-body clients")
    ap.add_argument("--drop", type=int, default=50, help="clients disconnecting mid-body")
    ap.add_argument("--body-timeout", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=120.0, help="time bound per phase")
    args = ap.parse_args()

    s = Server(args.model, args.body_timeout)
    try:
        time.sleep(0.5)
        rss0 = s.rss_mb()
        print(f"server pid {s.proc.pid} on {s.host}:{s.port}, RSS {rss0:.0f} MiB at start\n")
        print("| phase | requests | by status | p50 s | p99 s |")
        print("|---|---|---|---|---|")
        body = json.dumps({"prompt": "Once upon a time", "max_tokens": args.max_tokens,
                           "stream": True, "ignore_eos": True}).encode()  # fmt: skip
        end = time.monotonic() + args.seconds
        report("load", run_parallel(args.clients, lambda i: post(
            s, "/v1/completions", body, {}, args.seconds), end))  # fmt: skip
        rss_load = s.rss_mb()

        big = json.dumps({"prompt": "x" * 1_000_000, "max_tokens": 1}).encode()
        end = time.monotonic() + args.seconds
        report("big (1 MB prompt)", run_parallel(8, lambda i: post(
            s, "/v1/completions", big, {}, args.seconds), end))  # fmt: skip
        rss_big = s.rss_mb()

        ok = json.dumps({"prompt": "Hi", "max_tokens": 2}).encode()
        cases = [
            ("/v1/completions", ok, {"Content-Type": "text/plain", "Origin": "http://evil.example"}),
            ("/v1/completions", ok, {"Host": "evil.example"}),
            ("/v1/completions", b'{"prompt": "\\ud800"}', {}),
            ("/v1/completions", b"[" * 100_000 + b"]" * 100_000, {}),
        ]
        report("hostile (foreign page, rebinding, surrogate, deep)",
               [post(s, p, b, h, 30) for p, b, h in cases])  # fmt: skip

        end = time.monotonic() + args.seconds
        report(f"slow bodies (--body-timeout {args.body_timeout:g})", run_parallel(
            args.slow, lambda i: slow_client(s, args.seconds), end))  # fmt: skip

        n_log = len(s.log)
        report("drop mid-body", [drop_client(s) for _ in range(args.drop)])
        time.sleep(1.0)
        drop_lines = len(s.log) - n_log
        rss1 = s.rss_mb()
        print(f"\nRSS MiB: start {rss0:.0f}, after load {rss_load:.0f}, after 1 MB prompts "
              f"{rss_big:.0f}, end {rss1:.0f}")  # fmt: skip
        print(f"server log lines for {args.drop} mid-body disconnects: {drop_lines}")
        tracebacks = sum("Traceback" in line for line in s.log)
        print(f"tracebacks in the server log: {tracebacks}")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
