"""Server metrics in Prometheus text format, and the energy-per-token estimate.

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

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft_sum += seconds
            self.ttft_count += 1

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
        """Prometheus text exposition format 0.0.4."""
        tps = self.tokens_per_second()
        with self._lock:
            lines: list[str] = []

            def metric(name, kind, help_, samples):
                lines.append(f"# HELP {name} {help_}")
                lines.append(f"# TYPE {name} {kind}")
                for labels, value in samples:
                    lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
                    lines.append(
                        f"{name}{{{lab}}} {_num(value)}" if lab else f"{name} {_num(value)}"
                    )

            model = {"model": self.model_id}
            metric(
                "mulfree_http_requests_total",
                "counter",
                "HTTP requests by endpoint and status code.",
                [({"endpoint": e, "code": str(c)}, n) for (e, c), n in sorted(self.http.items())],
            )
            metric(
                "mulfree_requests_finished_total",
                "counter",
                "Generation requests ended, by reason (stop, length, cancelled, timeout, server_error).",
                [({**model, "reason": r}, n) for r, n in sorted(self.finished.items())],
            )
            metric(
                "mulfree_prompt_tokens_total",
                "counter",
                "Prompt tokens prefilled.",
                [(model, self.prompt_tokens)],
            )
            metric(
                "mulfree_generated_tokens_total",
                "counter",
                "Tokens generated.",
                [(model, self.completion_tokens)],
            )
            metric(
                "mulfree_tokens_per_second",
                "gauge",
                f"Generated tokens per second over the last {RATE_WINDOW_S:g} s.",
                [(model, tps)],
            )
            metric(
                "mulfree_decode_steps_total",
                "counter",
                "Batched decode steps run.",
                [(model, self.decode_steps)],
            )
            metric(
                "mulfree_decode_seconds_total",
                "counter",
                "Time spent in decode steps.",
                [(model, self.decode_seconds)],
            )
            metric(
                "mulfree_prefill_seconds_total",
                "counter",
                "Time spent in prefill.",
                [(model, self.prefill_seconds)],
            )
            metric(
                "mulfree_batch_size",
                "gauge",
                "Requests in the last decode step.",
                [(model, self.last_batch)],
            )
            metric("mulfree_active_requests", "gauge", "Requests decoding now.", [(model, active)])
            metric(
                "mulfree_waiting_requests",
                "gauge",
                "Requests queued for a batch place.",
                [(model, waiting)],
            )
            # A summary without quantiles: its _sum and _count samples give the mean.
            name = "mulfree_time_to_first_token_seconds"
            lines.append(f"# HELP {name} Time from a request's arrival to its first token.")
            lines.append(f"# TYPE {name} summary")
            lines.append(f'{name}_sum{{model="{_esc(self.model_id)}"}} {_num(self.ttft_sum)}')
            lines.append(f'{name}_count{{model="{_esc(self.model_id)}"}} {_num(self.ttft_count)}')
            if self.step_pj is not None:
                now_b = max(self.last_batch, 1)
                metric(
                    "mulfree_energy_per_token_picojoules",
                    "gauge",
                    "Estimated energy per generated token (mulfree.energy op count priced by the "
                    "energy table) at the last step's batch size.",
                    [(model, self.energy_per_token_pj(now_b))],
                )
                metric(
                    "mulfree_energy_per_token_batch1_picojoules",
                    "gauge",
                    "Estimated energy per generated token for a lone request.",
                    [(model, self.energy_per_token_pj(1))],
                )
                metric(
                    "mulfree_energy_estimated_joules_total",
                    "counter",
                    "Estimated energy of all generated tokens.",
                    [(model, self.energy_pj_total * 1e-12)],
                )
            return "\n".join(lines) + "\n"


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v) -> str:
    if isinstance(v, int):
        return str(v)
    return repr(float(v))
