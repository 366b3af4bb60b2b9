"""The scheduler: one worker thread decodes every active request together, step by step.

Requests enter a bounded set of slots: `max_batch` decode together, up to `max_queue` more wait.
`submit` refuses a request when all slots are taken (the server answers 429). Each worker
iteration:
  1. drops requests that were cancelled (client gone) or ran past their deadline, freeing state;
  2. admits waiting requests into free batch places: prefill -> state + first token;
  3. runs one batched decode step for all active requests and samples each one's next token
     with its own generator; finished requests free their state and their slot.
Outputs travel to the asyncio side as events on the request's own asyncio.Queue, handed over
once per phase of an iteration (after the admissions, after the step) in one cross-thread call
per event loop, not one per token.

The worker's own torch work (sampling and log-probabilities on a step's [batch, vocab] logits)
runs on one torch thread (`HOST_TORCH_THREADS`): split over threads it gains little at these
sizes, and a second thread then has to be woken on cores the decode kernels' workers, the event
loop and often the clients share; a woken worker that finds no free core holds a whole op up
for a scheduler time slice (ms, where the op takes ~0.1 ms). The model calls keep the thread
count they were built with.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from dataclasses import dataclass, field

import torch

from mulfree.engine.detok import Detokenizer
from mulfree.engine.sampler import (
    SamplingParams,
    TokenLogprob,
    make_generator,
    sample_batch,
    token_logprobs,
)
from mulfree.engine.stops import find_stop, holdback, longest
from mulfree.serve.backends import Backend, RequestState
from mulfree.serve.metrics import Metrics


class QueueFull(Exception):
    """Every batch place and queue place is taken."""


@dataclass
class Delta:
    text: str
    # With GenRequest.logprobs: the tokens sampled since the previous event (their text may
    # be in this delta, a later one, or held back as a stop string's start).
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Finished:
    reason: str  # "stop" (eos or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)  # tokens not yet reported
    # With GenRequest.prompt_logprobs: positions 1.. of the prompt (position 0 has none).
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Failed:
    kind: str  # "timeout" or "server_error"
    message: str
    completion_tokens: int = 0


@dataclass(eq=False)
class GenRequest:
    """One generation request; created on the asyncio side, advanced by the worker."""

    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    timeout_s: float = 600.0
    logprobs: int | None = None  # report each sampled token's logprob + this many alternatives
    prompt_logprobs: bool = False  # also the prompt's (needs logprobs)
    # The asyncio side: events arrive here (Delta..., then one Finished or Failed).
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    # Timing (monotonic seconds), for metrics.
    t_submit: float = 0.0
    t_first: float | None = None
    # Worker state.
    cancelled: bool = False
    done: bool = False
    state: RequestState | None = None
    generator: torch.Generator | None = None
    n_generated: int = 0
    last_token: int = -1
    text: str = ""
    sent: int = 0
    detok: Detokenizer | None = None
    history: list[int] = field(default_factory=list)  # prompt + sampled tokens (penalties)
    lp_pending: list[TokenLogprob] = field(default_factory=list)
    lp_prompt: list[TokenLogprob] = field(default_factory=list)

    @property
    def deadline(self) -> float:
        return self.t_submit + self.timeout_s


# torch intra-op threads for the worker's sampling (see the module docstring). On the 2-core AMD
# EPYC dev machine, busy: one [16, 8192] softmax took ~8 ms on 2 threads, 0.08-0.2 ms on one.
HOST_TORCH_THREADS = 1


@contextlib.contextmanager
def torch_threads(n: int):
    """torch intra-op threads = n inside (this thread's setting), restored after."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Scheduler:
    def __init__(
        self,
        backend: Backend,
        *,
        max_batch: int,
        max_queue: int,
        metrics: Metrics,
        max_context: int | None = None,
    ):
        self.backend = backend
        backend.reserve(max_batch)  # e.g. the decoder's state arena: sized once, never moved
        self.max_context = max_context or backend.max_context
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.metrics = metrics
        self._cond = threading.Condition()
        self._pending: collections.deque[GenRequest] = collections.deque()
        self._active: list[GenRequest] = []
        self._inflight = 0  # submitted and not yet finished (pending + active)
        self._stop = False
        self._thread: threading.Thread | None = None
        self._outbox: list[tuple[GenRequest, object]] = []  # worker side: events not yet handed over

    # --- asyncio side ----------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.max_batch + self.max_queue

    def counts(self) -> tuple[int, int]:
        """(active, waiting) requests."""
        with self._cond:
            return len(self._active), self._inflight - len(self._active)

    def submit(self, req: GenRequest) -> None:
        """Queue a request (raises QueueFull when every slot is taken)."""
        req.loop = asyncio.get_running_loop()
        req.events = asyncio.Queue()
        req.t_submit = time.monotonic()
        with self._cond:
            if self._inflight >= self.capacity:
                raise QueueFull
            self._inflight += 1
            self._pending.append(req)
            self._cond.notify()

    def cancel(self, req: GenRequest) -> None:
        """The client is gone: the worker frees the request's slot before its next step."""
        with self._cond:
            req.cancelled = True
            self._cond.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mulfree-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # --- worker side -----------------------------------------------------------------------
    def _emit(self, req: GenRequest, event) -> None:
        """Queue an event for the request's asyncio side (handed over by `_flush`)."""
        self._outbox.append((req, event))

    def _flush(self) -> None:
        """Hand the queued events over: one call_soon_threadsafe per event loop, in order."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for req, event in self._outbox:
            by_loop.setdefault(req.loop, []).append((req.events, event))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the event loop is closed: the server is shutting down
                pass

    def _release(self, req: GenRequest) -> None:
        if req.done:
            return
        req.done = True
        if req.state is not None:
            self.backend.free(req.state)
            req.state = None
        with self._cond:
            self._inflight -= 1
            if req in self._active:
                self._active.remove(req)

    def _finish(self, req: GenRequest, reason: str) -> None:
        if req.done:
            return
        if req.detok is not None and reason == "length":
            req.text += req.detok.flush()
        end = len(req.text)
        if req.stop:
            hit = find_stop(req.text, req.stop, 0)
            if hit is not None:
                end, reason = hit, "stop"
        if end > req.sent:
            self._emit(req, Delta(req.text[req.sent : end], self._take_logprobs(req)))
            req.sent = end
        fin = Finished(reason, len(req.prompt_ids), req.n_generated, self._take_logprobs(req),
                       req.lp_prompt)  # fmt: skip
        self._emit(req, fin)
        self.metrics.request_finished(reason)
        self._release(req)

    def _fail(self, req: GenRequest, kind: str, message: str) -> None:
        if req.done:
            return
        self._emit(req, Failed(kind, message, req.n_generated))
        self.metrics.request_finished(kind)
        self._release(req)

    @staticmethod
    def _take_logprobs(req: GenRequest) -> list[TokenLogprob]:
        out, req.lp_pending = req.lp_pending, []
        return out

    def _accept(self, req: GenRequest, tok: int, logits: torch.Tensor | None = None) -> None:
        """Take one sampled token (from `logits` [vocab]): emit the text it completes, or
        finish the request."""
        if req.logprobs is not None:
            req.lp_pending += token_logprobs(logits.unsqueeze(0), [tok], req.logprobs)
        req.history.append(tok)
        now = time.monotonic()
        if req.t_first is None:
            req.t_first = now
            self.metrics.first_token(now - req.t_submit)
        req.n_generated += 1
        req.last_token = tok
        if tok in self.backend.eos_token_ids and not req.ignore_eos:
            self._finish(req, "stop")
            return
        piece = req.detok.add(tok)
        if piece:
            scan_from = max(0, len(req.text) - longest(req.stop) + 1)
            req.text += piece
            if req.stop:
                hit = find_stop(req.text, req.stop, scan_from)
                if hit is not None:
                    req.text = req.text[:hit]
                    self._finish(req, "stop")
                    return
            safe = len(req.text) - holdback(req.text, req.stop)
            if safe > req.sent:
                self._emit(req, Delta(req.text[req.sent : safe], self._take_logprobs(req)))
                req.sent = safe
        if req.n_generated >= req.max_tokens or req.state.length >= self.max_context:
            self._finish(req, "length")

    def _admit(self, req: GenRequest) -> None:
        req.generator = make_generator(req.seed)
        req.detok = Detokenizer(self.backend, req.prompt_ids)
        req.history = list(req.prompt_ids)
        t0 = time.monotonic()
        every = req.prompt_logprobs and req.logprobs is not None
        req.state, logits = self.backend.start(req.prompt_ids, all_logits=every)
        self.metrics.prefill(len(req.prompt_ids), time.monotonic() - t0)
        if every:  # logits [T, V]: row i predicts prompt token i + 1
            req.lp_prompt = token_logprobs(logits[:-1], req.prompt_ids[1:], req.logprobs)
            logits = logits[-1]
        with self._cond:
            self._active.append(req)
        with torch_threads(HOST_TORCH_THREADS):
            tok = sample_batch(logits.unsqueeze(0), [req.params], [req.generator], [req.history])[0]
            self._accept(req, tok, logits)

    def _sweep(self) -> None:
        """Free cancelled and expired requests, waiting or active."""
        now = time.monotonic()
        with self._cond:
            gone = [
                r for r in list(self._pending) + self._active if r.cancelled or now > r.deadline
            ]
            for r in gone:
                if r in self._pending:
                    self._pending.remove(r)
        for r in gone:
            if r.cancelled:
                self.metrics.request_finished("cancelled")
                self._release(r)
            else:
                self._fail(r, "timeout", f"request timed out after {r.timeout_s:g} s")

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._pending and not self._active:
                    self._cond.wait()
                if self._stop:
                    break
            try:
                self._iteration()
            except Exception as e:  # never let the worker die: fail what it was holding
                with self._cond:
                    held = list(self._active)
                for r in held:
                    self._fail(r, "server_error", f"{type(e).__name__}: {e}")
            finally:
                self._flush()
        # Shutting down: tell everyone still waiting.
        with self._cond:
            left = list(self._pending) + list(self._active)
            self._pending.clear()
        for r in left:
            self._fail(r, "server_error", "the server is shutting down")
        self._flush()

    def _iteration(self) -> None:
        self._sweep()
        with self._cond:
            room = self.max_batch - len(self._active)
            new = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
        for req in new:
            try:
                self._admit(req)
            except Exception as e:  # a failing model call fails its request, not the server
                self._fail(req, "server_error", f"{type(e).__name__}: {e}")
        self._flush()  # the first tokens go out before the step
        with self._cond:
            batch = [r for r in self._active if not r.done]
        # Requests admitted in this iteration already have their first token; they join the
        # step too, which feeds that token.
        if not batch:
            return
        t0 = time.monotonic()
        try:
            logits = self.backend.step([r.state for r in batch], [r.last_token for r in batch])
        except Exception as e:
            for r in batch:
                self._fail(r, "server_error", f"{type(e).__name__}: {e}")
            return
        self.metrics.decode_step(len(batch), time.monotonic() - t0)
        live = [i for i, r in enumerate(batch) if not (r.cancelled or r.done)]
        # the step's logits stay valid until the backend's next call (see Backend.step)
        with torch_threads(HOST_TORCH_THREADS):
            try:
                tokens = sample_batch(
                    logits if len(live) == len(batch) else logits[live],
                    [batch[i].params for i in live],
                    [batch[i].generator for i in live],
                    [batch[i].history for i in live],
                )
            except Exception as e:
                for i in live:
                    self._fail(batch[i], "server_error", f"{type(e).__name__}: {e}")
                return
            for i, tok in zip(live, tokens, strict=True):
                self._accept(batch[i], tok, logits[i])


def _deliver(items: list) -> None:
    """On the event loop: put each (queue, event) in order."""
    for queue, event in items:
        queue.put_nowait(event)
