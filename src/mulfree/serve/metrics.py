"""Server metrics through prometheus_client, and the energy-per-token estimate.

Each `Metrics` has its own registry (several servers can share a process): its counters and
gauges are collected from the plain attributes the scheduler updates (a custom collector, so the
names stay those /metrics has always had), and two real histograms, time to first token and
time per output token (the decode step a request waits for each token), use prometheus_client's
Histogram. /metrics is `generate_latest(registry)`.

The energy estimate counts the operations and bytes of real decode steps with
`mulfree.energy.EnergyCounter` and prices them with an `EnergyTable` (default: Horowitz 45 nm).
For the batched MatMul-free backend a step of B requests reads the weights once and does B
tokens' arithmetic, so energy per step is affine in B: E(B) = E(1) + (B - 1) (E(2) - E(1)),
measured from steps of batch 1 and 2; per token it is E(B) / B. The generic backend steps one
request at a time, so its per-token energy is E(1) (counted at a short context: attention
work grows with context length, which this estimate leaves out).
"""

from __future__ import annotations

import collections
import threading
import time

from mulfree.serve.backends import Backend

RATE_WINDOW_S = 10.0  # tokens/s is averaged over this trailing window
# Histogram buckets (seconds): a first token comes after a prefill (ms to tens of s on a CPU),
# a later one after one decode step (sub-ms for tiny models, ~10-100 ms for 1B on a CPU).
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def estimate_step_energy(
    backend: Backend, table_name: str = "horowitz_45nm"
) -> tuple[float, float]:
    """(pJ of a decode step of 1 request, pJ of a step of 2 requests), counted and priced.

    Each priced step follows a discarded counted one of the same shape, so one-time work (weight
    caches, packed views, and bookkeeping some layers do only while counting, such as the packed
    layers' non-zero weight count) is not priced as per-step work."""
    if hasattr(backend, "step_energy_pj"):  # the torch-free backend: no modules to count
        return backend.step_energy_pj(table_name)
    from mulfree.energy import EnergyCounter, EnergyTable, price

    table = EnergyTable.load(table_name)
    prompt = backend.encode("energy") or [0]
    out = []
    with backend.lock:
        for batch in (1, 2):
            states = [backend.start(prompt)[0] for _ in range(batch)]
            with EnergyCounter(backend.model):  # warm-up, discarded
                backend.step(states, [prompt[-1]] * batch)
            with EnergyCounter(backend.model) as counter:
                backend.step(states, [prompt[-1]] * batch)
            for s in states:
                backend.free(s)
            out.append(price(counter.counts, counter.bytes, table)["total_pJ"])
    return out[0], out[1]


class Metrics:
    """Counters updated by the scheduler thread and the HTTP handlers; read by /metrics."""

    def __init__(self, model_id: str, backend_kind: str):
        self.model_id = model_id
        self.backend_kind = backend_kind
        self._lock = threading.Lock()
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        self.http = collections.Counter()  # (endpoint, status) -> requests
        self.finished = collections.Counter()  # reason -> requests
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.decode_steps = 0
        self.decode_seconds = 0.0
        self.prefill_seconds = 0.0
        self.last_batch = 0
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.energy_pj_total = 0.0
        self.step_pj: tuple[float, float] | None = None  # (E(1), E(2)), when estimated
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._gauges = (0, 0)  # (active, waiting), set by render
        from prometheus_client import CollectorRegistry, Histogram

        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.ttft = Histogram(
            "mulfree_time_to_first_token_seconds",
            "Time from a request's arrival to its first token.",
            ["model"], buckets=TTFT_BUCKETS, registry=self.registry,
        ).labels(model_id)  # fmt: skip
        self.tpot = Histogram(
            "mulfree_time_per_output_token_seconds",
            "Time of the decode step that produced a token (each request in it waited this long).",
            ["model"], buckets=TPOT_BUCKETS, registry=self.registry,
        ).labels(model_id)  # fmt: skip

    # --- energy ----------------------------------------------------------------------------
    def set_step_energy(self, e1: float, e2: float) -> None:
        self.step_pj = (e1, e2)

    def energy_per_token_pj(self, batch: int) -> float | None:
        if self.step_pj is None or batch < 1:
            return None
        e1, e2 = self.step_pj
        if self.backend_kind != "mmfree":
            return e1
        # A second request never makes a step cheaper; clamp in case the counts say otherwise.
        return (e1 + (batch - 1) * max(e2 - e1, 0.0)) / batch

    # --- updates ---------------------------------------------------------------------------
    def http_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.http[(endpoint, status)] += 1

    def request_finished(self, reason: str) -> None:
        with self._lock:
            self.finished[reason] += 1

    def prefill(self, n_tokens: int, seconds: float) -> None:
        with self._lock:
            self.prompt_tokens += n_tokens
            self.prefill_seconds += seconds
            self._tokens(1)  # prefill samples a request's first token
            if self.step_pj is not None:
                self.energy_pj_total += self.energy_per_token_pj(1)

    def decode_step(self, batch: int, seconds: float) -> None:
        with self._lock:
            self.decode_steps += 1
            self.decode_seconds += seconds
            self.last_batch = batch
            self._tokens(batch)
            if self.step_pj is not None:
                self.energy_pj_total += batch * self.energy_per_token_pj(batch)
        self.tpot.observe(seconds)

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft_sum += seconds
            self.ttft_count += 1
        self.ttft.observe(seconds)

    def _tokens(self, n: int) -> None:
        now = time.monotonic()
        self.completion_tokens += n
        self._recent.append((now, n))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def tokens_per_second(self) -> float:
        with self._lock:
            now = time.monotonic()
            while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
                self._recent.popleft()
            if not self._recent:
                return 0.0
            span = min(RATE_WINDOW_S, now - self.started_monotonic)
            return sum(n for _, n in self._recent) / max(span, 1e-3)

    # --- exposition ------------------------------------------------------------------------
    def render(self, active: int, waiting: int) -> str:
        """Prometheus text exposition format 0.0.4 (prometheus_client's)."""
        from prometheus_client import generate_latest

        self._gauges = (active, waiting)
        return generate_latest(self.registry).decode()

    def collect(self):
        """prometheus_client's collector protocol: the counters and gauges, as families."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        tps = self.tokens_per_second()
        active, waiting = self._gauges
        m = [self.model_id]
        with self._lock:

            def family(cls, name, help_, value=None, labels=("model",), samples=None):
                f = cls(name, help_, labels=list(labels))
                for lab, v in samples if samples is not None else [(m, value)]:
                    f.add_metric(lab, v)
                return f

            C, G = CounterMetricFamily, GaugeMetricFamily  # noqa: N806
            yield family(C, "mulfree_http_requests", "HTTP requests by endpoint and status code.",
                         labels=("endpoint", "code"),
                         samples=[([e, str(c)], n) for (e, c), n in sorted(self.http.items())])
            yield family(C, "mulfree_requests_finished", "Generation requests ended, by reason "
                         "(stop, length, cancelled, timeout, server_error).",
                         labels=("model", "reason"),
                         samples=[(m + [r], n) for r, n in sorted(self.finished.items())])
            yield family(C, "mulfree_prompt_tokens", "Prompt tokens prefilled.", self.prompt_tokens)
            yield family(C, "mulfree_generated_tokens", "Tokens generated.", self.completion_tokens)
            yield family(G, "mulfree_tokens_per_second",
                         f"Generated tokens per second over the last {RATE_WINDOW_S:g} s.", tps)
            yield family(C, "mulfree_decode_steps", "Batched decode steps run.", self.decode_steps)
            yield family(C, "mulfree_decode_seconds", "Time spent in decode steps.",
                         self.decode_seconds)
            yield family(C, "mulfree_prefill_seconds", "Time spent in prefill.",
                         self.prefill_seconds)
            yield family(G, "mulfree_batch_size", "Requests in the last decode step.",
                         self.last_batch)
            yield family(G, "mulfree_active_requests", "Requests decoding now.", active)
            yield family(G, "mulfree_waiting_requests", "Requests queued for a batch place.",
                         waiting)
            if self.step_pj is not None:
                now_b = max(self.last_batch, 1)
                yield family(G, "mulfree_energy_per_token_picojoules",
                             "Estimated energy per generated token (mulfree.energy op count priced "
                             "by the energy table) at the last step's batch size.",
                             self.energy_per_token_pj(now_b))
                yield family(G, "mulfree_energy_per_token_batch1_picojoules",
                             "Estimated energy per generated token for a lone request.",
                             self.energy_per_token_pj(1))
                yield family(C, "mulfree_energy_estimated_joules",
                             "Estimated energy of all generated tokens.",
                             self.energy_pj_total * 1e-12)
        # fmt: skip
