"""The HTTP application (Starlette): OpenAI-compatible routes, metrics, health and the web page.

The routes only: what a request must be before it is served (authentication, the body, its
limits against the served model) is mulfree.serve.validation, the body's schema
mulfree.serve.protocol.

Every error is an OpenAI-style object {"error": {"message", "type", "param", "code"}} with the
matching status: 400 bad parameters or malformed JSON (also: nested too deeply, lone
surrogates, a prompt over its byte cap), 401 missing/wrong API key, 403 a Host or Origin that is
not allowed (serve/guard.py), 404 unknown model or route, 405 wrong method, 408 generation or
body upload timed out, 413 body too large, 415 a JSON endpoint called without
`Content-Type: application/json`, 429 all slots taken (with Retry-After), 500 model failure.
Every response is counted in /metrics by endpoint and status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from mulfree.engine.sampler import SamplerConfig, TokenLogprob
from mulfree.kernels.memory import trim_heap
from mulfree.serve.backends import Backend
from mulfree.serve.config import ServeConfig
from mulfree.serve.metrics import Metrics
from mulfree.serve.page import PAGE_HTML
from mulfree.serve.protocol import openapi
from mulfree.serve.scheduler import Failed, Finished, GenRequest, QueueFull, Scheduler
from mulfree.serve.validation import ApiError, ClientGone, Job, RequestChecks

ENDPOINTS = ("/", "/health", "/metrics", "/openapi.json", "/v1/models", "/v1/completions",
             "/v1/chat/completions")  # fmt: skip
DISCONNECT_POLL_S = 0.25  # how often a non-streaming request checks that its client is still there
# After a request this large, the memory malloc kept from parsing and tokenizing it is returned.
TRIM_AFTER_BYTES = 256 << 10
log = logging.getLogger("uvicorn.error")  # the server's own log stream


@dataclass
class _Choice:
    """What arrived for one choice: text pieces, sampled tokens' logprobs, the end."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    fin: Finished | None = None

    def add(self, ev) -> None:
        self.logprobs += ev.logprobs
        if isinstance(ev, Finished):
            self.fin = ev
        else:
            self.text.append(ev.text)


def _prompt_tokens(jobs: list[Job]) -> int:
    """Prompt tokens of a request, each prompt once however many choices it has."""
    return sum(len(p) for p in {id(j.prompt_ids): j.prompt_ids for j in jobs}.values())


class App:
    """Holds the backend, scheduler and metrics; its methods are the route handlers."""

    def __init__(self, config: ServeConfig, backend: Backend, metrics: Metrics | None = None):
        self.config = config
        self.backend = backend
        self.metrics = metrics or Metrics(backend.model_id, backend.kind)
        # Per request: prompt + generated tokens (the config's limit, else the backend's; never
        # more than a backend whose per-request memory is sized for its own limit holds).
        self.max_context = config.max_context or backend.max_context
        if backend.context_bound:
            self.max_context = min(self.max_context, backend.max_context)
        self.scheduler = Scheduler(
            backend,
            max_batch=config.max_batch,
            max_queue=config.max_queue,
            metrics=self.metrics,
            max_context=self.max_context,
        )
        self.checks = RequestChecks(config, backend, self.max_context)  # the protocol's checks
        self.created = int(time.time())
        self.energy = None  # mulfree.serve.energy.ServeEnergy when a meter is on
        self._token_texts: dict[int, str] = {}  # token id -> its text, for logprobs

    # --- generation ------------------------------------------------------------------------
    def _submit(self, jobs: list[Job]) -> list[GenRequest]:
        reqs = []
        for job in jobs:
            req = GenRequest(
                job.prompt_ids,
                job.max_tokens,
                job.params,
                job.seed,
                job.stop,
                job.ignore_eos,
                timeout_s=self.config.request_timeout_s,
                logprobs=job.logprobs,
                prompt_logprobs=job.prompt_logprobs,
            )
            try:
                self.scheduler.submit(req)
            except QueueFull:
                for r in reqs:  # all or nothing
                    self.scheduler.cancel(r)
                raise ApiError(
                    429,
                    f"the server is busy: all {self.scheduler.capacity} request slots "
                    "are taken; retry shortly",
                    type_="rate_limit_error",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": "1"},
                ) from None
            reqs.append(req)
        return reqs

    @staticmethod
    def _failure(ev: Failed) -> ApiError:
        if ev.kind == "timeout":
            return ApiError(408, ev.message, type_="timeout_error", code="timeout")
        return ApiError(500, ev.message, type_="server_error", code="server_error")

    @staticmethod
    def _merge(reqs: list[GenRequest]) -> tuple[asyncio.Queue, list[asyncio.Task]]:
        """One queue of (index, event) fed from every request's queue; the tasks feeding it
        end after the request's Finished or Failed (cancel them when done)."""
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, req: GenRequest):
            while True:
                ev = await req.events.get()
                merged.put_nowait((i, ev))
                if isinstance(ev, Finished | Failed):
                    return

        return merged, [asyncio.ensure_future(pump(i, r)) for i, r in enumerate(reqs)]

    async def _collect(self, request: Request, reqs: list[GenRequest]):
        """Wait for non-streaming requests; cancel them if the client goes away meanwhile.

        The client is checked every DISCONNECT_POLL_S seconds of wall time, whether or not
        tokens keep arriving. Returns one _Choice per request, or None when the client left."""
        loop = asyncio.get_running_loop()
        out = [_Choice() for _ in reqs]
        merged, tasks = self._merge(reqs)
        left = len(reqs)
        next_check = loop.time() + DISCONNECT_POLL_S
        try:
            while left:
                try:
                    wait = max(0.0, next_check - loop.time())
                    i, ev = await asyncio.wait_for(merged.get(), wait)
                except TimeoutError:
                    ev = None
                if loop.time() >= next_check:
                    if await request.is_disconnected():
                        return None
                    next_check = loop.time() + DISCONNECT_POLL_S
                if isinstance(ev, Failed):
                    raise self._failure(ev)
                if ev is not None:
                    out[i].add(ev)
                    left -= isinstance(ev, Finished)
            return out
        finally:
            for t in tasks:
                t.cancel()
            for r in reqs:  # a no-op for those that finished
                self.scheduler.cancel(r)

    async def _generate(self, request: Request, chat: bool):
        body = await self.checks.body(request, chat)
        if self.energy is not None and (spent := self.energy.exhausted()):
            raise ApiError(503, spent, type_="server_error", code="energy_budget_exhausted")
        # Tokenizing a long prompt takes a while: keep it off the event loop.
        to_ids = self.checks.chat_prompts if chat else self.checks.completion_prompts
        large = int(request.headers.get("content-length") or 0) > TRIM_AFTER_BYTES
        try:
            prompts, echoes = await asyncio.to_thread(to_ids, body)
        finally:
            if large:  # return the parse/tokenize buffers of a large request to the OS
                await asyncio.to_thread(trim_heap)
        jobs = self.checks.jobs(body, prompts, echoes, chat=chat)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        metered = self.energy.mark(self.metrics.completion_tokens) if self.energy else None
        reqs = self._submit(jobs)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if body.stream:
            return _GenerationStream(
                self._sse(reqs, jobs, rid, created, chat, include_usage),
                on_close=lambda: [self.scheduler.cancel(r) for r in reqs],
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        choices = await self._collect(request, reqs)
        if choices is None:  # client gone: nobody to answer
            return PlainTextResponse("", status_code=499)
        completion = sum(c.fin.completion_tokens for c in choices)
        usage = _usage(_prompt_tokens(jobs), completion)
        if metered is not None:  # this request's share of the measured energy
            usage.update(self.energy.charge(metered, self.metrics.completion_tokens, completion))
        out = []
        for job, c in zip(jobs, choices, strict=True):
            text = job.echo + "".join(c.text)
            lp = self._logprobs(job, c, chat=chat)
            if chat:
                out.append({"index": job.index, "message": {"role": "assistant", "content": text},
                            "logprobs": lp, "finish_reason": c.fin.reason})  # fmt: skip
            else:
                out.append({"index": job.index, "text": text, "logprobs": lp,
                            "finish_reason": c.fin.reason})  # fmt: skip
        body = {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": self.backend.model_id,
            "choices": out,
            "usage": usage,
        }
        return JSONResponse(body)

    # --- log-probabilities, as the API spells them -------------------------------------------
    def _token_text(self, tok: int) -> str:
        text = self._token_texts.get(tok)
        if text is None:
            text = self.backend.tokenizer.decode([tok], skip_special_tokens=False)
            self._token_texts[tok] = text
        return text

    def _logprobs(self, job: Job, c: _Choice, *, chat: bool, start: int = 0) -> dict | None:
        """The choice's `logprobs` object: chat's {"content": [...]} or completions' four
        parallel lists (with echo + logprobs, the prompt's positions come first)."""
        if job.logprobs is None:
            return None
        if chat:
            def entry(tok: int, lp: float) -> dict:
                t = self._token_text(tok)
                return {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}

            return {"content": [
                {**entry(e.token, e.logprob), "top_logprobs": [entry(t, v) for t, v in e.top]}
                for e in c.logprobs
            ]}  # fmt: skip
        tokens, values, tops, offsets = [], [], [], []
        pos = start

        def add(tok: int, lp: float | None, top: dict | None):
            nonlocal pos
            text = self._token_text(tok)
            tokens.append(text)
            values.append(lp)
            tops.append(top)
            offsets.append(pos)
            pos += len(text)

        entries = list(c.logprobs)
        if job.prompt_logprobs:
            add(job.prompt_ids[0], None, None)
            entries = c.fin.prompt_logprobs + entries
        for e in entries:
            # keyed by text, as OpenAI's format has it: the token itself first, so that an
            # alternative decoding to the same text (a byte token) cannot overwrite its value
            top = {self._token_text(e.token): e.logprob}
            for t, v in e.top:
                top.setdefault(self._token_text(t), v)
            add(e.token, e.logprob, top)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
                "text_offset": offsets}  # fmt: skip

    async def _sse(self, reqs: list[GenRequest], jobs: list[Job], rid: str, created: int,
                   chat: bool, include_usage: bool):  # fmt: skip
        obj = "chat.completion.chunk" if chat else "text_completion"
        model = self.backend.model_id

        def chunk(job: Job, delta_text: str | None, finish: str | None, *, role=False,
                  lp: list | None = None) -> str:  # fmt: skip
            logprobs = None
            if lp and job.logprobs is not None:
                logprobs = self._logprobs(job, _Choice(logprobs=lp), chat=chat)
            if chat:
                delta = (
                    {"role": "assistant", "content": ""}
                    if role
                    else ({} if delta_text is None else {"content": delta_text})
                )
                choice = {"index": job.index, "delta": delta, "logprobs": logprobs,
                          "finish_reason": finish}  # fmt: skip
            else:
                choice = {"index": job.index, "text": delta_text or "", "logprobs": logprobs,
                          "finish_reason": finish}  # fmt: skip
            body = {"id": rid, "object": obj, "created": created, "model": model,
                    "choices": [choice]}  # fmt: skip
            if include_usage:
                body["usage"] = None
            return f"data: {json.dumps(body)}\n\n"

        merged, tasks = self._merge(reqs)
        left = len(reqs)
        completion = 0
        try:
            for job in jobs:
                if chat:
                    yield chunk(job, None, None, role=True)
                if job.echo:
                    yield chunk(job, job.echo, None)
            while left:
                i, ev = await merged.get()
                job = jobs[i]
                if isinstance(ev, Finished):
                    if ev.logprobs:
                        yield chunk(job, "" if not chat else None, None, lp=ev.logprobs)
                    yield chunk(job, None, ev.reason)
                    completion += ev.completion_tokens
                    left -= 1
                    continue
                if isinstance(ev, Failed):
                    err = self._failure(ev)
                    body = {"error": {"message": err.message, "type": err.type, "param": None,
                                      "code": err.code}}  # fmt: skip
                    yield f"data: {json.dumps(body)}\n\n"
                    break
                yield chunk(job, ev.text, None, lp=ev.logprobs)
            else:
                if include_usage:
                    prompt = _prompt_tokens(jobs)
                    body = {"id": rid, "object": obj, "created": created, "model": model,
                            "choices": [], "usage": _usage(prompt, completion)}  # fmt: skip
                    yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for t in tasks:
                t.cancel()
            # A client that disconnects mid-stream cancels this generator, and one failed choice
            # ends the stream: free every slot now (a no-op for those that finished).
            for r in reqs:
                self.scheduler.cancel(r)

    # --- routes ----------------------------------------------------------------------------
    async def completions(self, request: Request):
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: Request):
        return await self._generate(request, chat=True)

    def _model_card(self) -> dict:
        return {
            "id": self.backend.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "mulfree",
        }

    async def models(self, request: Request):
        self.checks.auth(request)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request):
        self.checks.auth(request)
        if request.path_params["model_id"] != self.backend.model_id:
            raise ApiError(
                404,
                f"the model {request.path_params['model_id']!r} does not exist",
                param="model",
                code="model_not_found",
            )
        return JSONResponse(self._model_card())

    async def openapi_json(self, request: Request):
        return JSONResponse(openapi())

    async def health(self, request: Request):
        active, waiting = self.scheduler.counts()
        return JSONResponse(
            {
                "status": "ok",
                "model": self.backend.model_id,
                "backend": self.backend.kind,
                "weights": self.backend.weights,
                "active": active,
                "waiting": waiting,
                "capacity": self.scheduler.capacity,
            }
        )

    async def metrics_text(self, request: Request):
        active, waiting = self.scheduler.counts()
        text = self.metrics.render(active, waiting)
        if self.energy is not None:
            text += self.energy.render(self.metrics.completion_tokens, self.backend.model_id)
        return PlainTextResponse(
            text,
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    async def page(self, request: Request):
        # JSON inside <script>: escape what could end the script or open markup ("</script>",
        # "<!--") and the line separators JavaScript treats as newlines.
        literal = json.dumps(self.backend.model_id)
        for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                        ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
            literal = literal.replace(ch, esc)
        d = SamplerConfig()  # the shared defaults, as a request without sampling fields gets
        html = PAGE_HTML.replace("{{TEMPERATURE}}", repr(d.temperature))
        html = html.replace("{{TOP_P}}", repr(d.top_p))
        html = html.replace("{{MAX_TOKENS}}", str(self.config.default_max_tokens))
        return HTMLResponse(html.replace("{{MODEL_ID}}", literal))


class _GenerationStream(StreamingResponse):
    """A StreamingResponse that releases its request however the response ends.

    The generator's own `finally` does not run when the client disconnects before the first
    chunk is pulled (Starlette then cancels a stream that never started); this does. Cancelling
    a request that already finished is a no-op.
    """

    def __init__(self, content, *, on_close, **kwargs):
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _usage(prompt: int, completion: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def build_app(config: ServeConfig, backend: Backend, *, estimate_energy: bool = True) -> Starlette:
    """The ASGI app serving `backend`; its scheduler thread runs between startup and shutdown."""
    state = App(config, backend)
    from mulfree.serve.energy import ServeEnergy

    state.energy = ServeEnergy.from_config(config)
    if estimate_energy and config.energy_table:
        state.metrics.set_step_energy(*_energy(backend, config.energy_table))

    def wrap(endpoint: str, handler):
        async def route(request: Request):
            try:
                response = await handler(request)
            except ApiError as e:
                response = e.response()
            except ClientGone:  # one line, not a traceback: slow or flaky clients are normal
                client = request.client
                log.info("client %s disconnected while sending its request body to %s",
                         f"{client.host}:{client.port}" if client else "?", endpoint)  # fmt: skip
                response = PlainTextResponse("", status_code=499)
            except Exception as e:  # a bug: logged once with its traceback, answered 500
                log.exception("internal error on %s", endpoint)
                response = ApiError(
                    500, f"internal error: {type(e).__name__}", type_="server_error",
                    code="server_error",
                ).response()  # fmt: skip
            state.metrics.http_request(endpoint, response.status_code)
            return response

        return route

    routes = [
        Route("/", wrap("/", state.page), methods=["GET"]),
        Route("/health", wrap("/health", state.health), methods=["GET"]),
        Route("/metrics", wrap("/metrics", state.metrics_text), methods=["GET"]),
        Route("/openapi.json", wrap("/openapi.json", state.openapi_json), methods=["GET"]),
        Route("/v1/models", wrap("/v1/models", state.models), methods=["GET"]),
        Route("/v1/models/{model_id:path}", wrap("/v1/models", state.model), methods=["GET"]),
        Route("/v1/completions", wrap("/v1/completions", state.completions), methods=["POST"]),
        Route(
            "/v1/chat/completions",
            wrap("/v1/chat/completions", state.chat_completions),
            methods=["POST"],
        ),
    ]

    async def http_error(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        state.metrics.http_request("other", exc.status_code)
        return ApiError(
            exc.status_code,
            f"{request.method} {request.url.path}: {exc.detail}",
            code=code,
            headers=getattr(exc, "headers", None),
        ).response()

    async def server_error(request: Request, exc: Exception):
        state.metrics.http_request("other", 500)
        return ApiError(
            500, f"internal error: {type(exc).__name__}", type_="server_error", code="server_error"
        ).response()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        state.scheduler.start()
        try:
            yield
        finally:
            state.scheduler.stop()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.mulfree = state
    if config.allowed_origins:  # CORS only for the listed origins (none by default)
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.allowed_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    from mulfree.serve.guard import HostOriginGuard

    def refused(path: str, status: int) -> None:
        state.metrics.http_request(path if path in ENDPOINTS else "other", status)

    app.add_middleware(
        HostOriginGuard,
        bound_host=config.host,
        allowed_hosts=config.allowed_hosts,
        allowed_origins=config.allowed_origins,
        on_refuse=refused,
    )
    return app


def _energy(backend: Backend, table: str) -> tuple[float, float]:
    from mulfree.serve.metrics import estimate_step_energy

    return estimate_step_energy(backend, table)
