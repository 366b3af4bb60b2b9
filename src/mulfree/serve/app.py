"""The HTTP application (Starlette): OpenAI-compatible routes, metrics, health and the web page.

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
import hmac
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from mulfree.kernels.memory import trim_heap
from mulfree.serve.backends import Backend
from mulfree.serve.config import ServeConfig
from mulfree.serve.metrics import Metrics
from mulfree.serve.page import PAGE_HTML
from mulfree.serve.sampling import SamplingParams
from mulfree.serve.scheduler import Failed, Finished, GenRequest, QueueFull, Scheduler

MAX_STOP = 4  # OpenAI allows up to 4 stop sequences
ENDPOINTS = ("/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")
ROLES = ("system", "developer", "user", "assistant", "tool")
# Refused bodies (too large, unauthenticated) are read and dropped up to this size so that the
# client gets the error response; beyond it the connection is simply closed.
DRAIN_BYTES = 64 << 20
DISCONNECT_POLL_S = 0.25  # how often a non-streaming request checks that its client is still there
# After a request this large, the memory malloc kept from parsing and tokenizing it is returned.
TRIM_AFTER_BYTES = 256 << 10
log = logging.getLogger("uvicorn.error")  # the server's own log stream


# The prompt byte cap is max_prompt tokens x the longest token's UTF-8 bytes x this slack: a
# normalizer (NFKC, accent stripping) can map up to ~3 bytes of text onto 1 byte of token.
PROMPT_BYTES_SLACK = 4
FALLBACK_TOKEN_BYTES = 64  # when a tokenizer does not list its vocabulary
# Under the byte cap, a long prompt is first tokenized over a prefix of this many characters per
# allowed token (4x a typical English token); if the prefix alone has more than max_prompt +
# PREFIX_SLACK_TOKENS tokens, the prompt is refused without tokenizing the rest. The slack
# covers the prefix's cut, which can split one word into more tokens than the whole word takes.
PREFIX_CHARS_PER_TOKEN = 16
PREFIX_SLACK_TOKENS = 64


def _longest_token_bytes(tokenizer) -> int:
    try:
        vocab = tokenizer.get_vocab()
        longest = max(len(t.encode("utf-8", "surrogatepass")) for t in vocab)
    except Exception:  # no vocabulary to look at (a custom tokenizer): a generous constant
        longest = FALLBACK_TOKEN_BYTES
    return PROMPT_BYTES_SLACK * max(longest, 1)


class _ClientGone(Exception):
    """The client closed the connection before its request body arrived."""


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


@dataclass
class Job:
    """A validated generation request, before submission."""

    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams
    seed: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    ignore_eos: bool


class App:
    """Holds the backend, scheduler and metrics; its methods are the route handlers."""

    def __init__(self, config: ServeConfig, backend: Backend, metrics: Metrics | None = None):
        self.config = config
        self.backend = backend
        self.metrics = metrics or Metrics(backend.model_id, backend.kind)
        # Per request: prompt + generated tokens (the config's limit, else the backend's).
        self.max_context = config.max_context or backend.max_context
        self.scheduler = Scheduler(
            backend,
            max_batch=config.max_batch,
            max_queue=config.max_queue,
            metrics=self.metrics,
            max_context=self.max_context,
        )
        self.max_prompt = min(config.max_prompt_tokens or self.max_context, self.max_context)
        # A prompt longer than this many UTF-8 bytes has more than max_prompt tokens whatever
        # its text, since no token covers more bytes than the tokenizer's longest one; it is
        # refused before the tokenizer runs (tokenizing 1 MB takes seconds and ~700 MB).
        self.max_prompt_bytes = min(
            config.max_body_bytes, self.max_prompt * _longest_token_bytes(backend.tokenizer)
        )
        self.created = int(time.time())
        self.energy = None  # mulfree.serve.energy.ServeEnergy when a meter is on

    # --- plumbing --------------------------------------------------------------------------
    def _auth(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), key.encode()
        ):
            raise ApiError(
                401,
                "missing or incorrect API key (send 'Authorization: Bearer <key>')",
                type_="authentication_error",
                code="invalid_api_key",
            )

    @staticmethod
    async def _drain(chunks) -> None:
        """Read and drop the rest of a refused body (up to DRAIN_BYTES).

        Closing a connection whose request body is still unread makes the kernel send a reset,
        which can destroy the error response before the client reads it."""
        n = 0
        async for chunk in chunks:
            n += len(chunk)
            if n > DRAIN_BYTES:
                return

    @staticmethod
    def _require_json(request: Request) -> None:
        """JSON endpoints take only `Content-Type: application/json`: a browser may send any
        other page's text/plain or form POST here without asking (a "simple" request), but not
        an application/json one without a CORS preflight, which this server does not grant."""
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise ApiError(
                415,
                f"Content-Type must be application/json, got {ctype or 'none'!r}",
                code="unsupported_media_type",
            )

    async def _read_json(self, request: Request) -> dict:
        limit = self.config.max_body_bytes
        too_big = ApiError(413, f"request body exceeds {limit} bytes", code="request_too_large")
        declared = request.headers.get("content-length")
        try:
            declared = None if declared is None else int(declared)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
        chunks = request.stream()
        if declared is not None and declared > limit:
            await self._drain(chunks)
            raise too_big
        body = bytearray()
        timeout = self.config.body_timeout_s
        try:
            async with asyncio.timeout(timeout):  # the whole body, however slowly it trickles
                async for chunk in chunks:
                    body += chunk
                    if len(body) > limit:
                        await self._drain(chunks)
                        raise too_big
        except TimeoutError:
            raise ApiError(
                408,
                f"the request body did not arrive within {timeout:g} s",
                type_="timeout_error",
                code="body_timeout",
                headers={"Connection": "close"},
            ) from None
        except ClientDisconnect:
            raise _ClientGone() from None
        try:
            data = json.loads(body)
        except RecursionError:
            raise ApiError(400, "malformed JSON body: nested too deeply", code="invalid_json") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"malformed JSON body: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the JSON body must be an object", code="invalid_json")
        if b"\\u" in body:  # only a \u escape can put a lone surrogate into valid UTF-8 JSON
            try:
                json.dumps(data, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(
                    400, "malformed JSON body: a string holds a lone surrogate (not valid Unicode)",
                    code="invalid_json",
                ) from None  # fmt: skip
        return data

    def _check_model(self, data: dict) -> None:
        model = data.get("model")
        if model is None:
            return  # the one served model
        if not isinstance(model, str):
            raise ApiError(400, "'model' must be a string", param="model")
        if model != self.backend.model_id:
            raise ApiError(
                404,
                f"the model {model!r} does not exist; this server serves {self.backend.model_id!r}",
                param="model",
                code="model_not_found",
            )

    def _job(self, data: dict, prompt_ids: list[int], *, chat: bool) -> Job:
        def number(name, default, lo, hi, *, integer=False):
            v = data.get(name, default)
            if v is None:
                v = default
            ok = isinstance(v, int) if integer else isinstance(v, int | float)
            if isinstance(v, bool) or not ok or (isinstance(v, float) and not math.isfinite(v)):
                raise ApiError(
                    400, f"'{name}' must be {'an integer' if integer else 'a number'}", param=name
                )
            if not lo <= v <= hi:
                raise ApiError(400, f"'{name}' must be between {lo} and {hi}, got {v}", param=name)
            return v

        number("n", 1, 1, 1, integer=True)  # one choice per request
        if data.get("logprobs") not in (None, False) or data.get("top_logprobs") is not None:
            raise ApiError(400, "logprobs are not supported", param="logprobs")
        if not prompt_ids:
            bos = getattr(self.backend.tokenizer, "bos_token_id", None)
            if bos is None:
                raise ApiError(400, "the prompt is empty", param="messages" if chat else "prompt")
            prompt_ids = [bos]
        room = self.max_context - len(prompt_ids)
        if len(prompt_ids) > self.max_prompt or room < 1:
            raise ApiError(
                400,
                f"the prompt has {len(prompt_ids)} tokens; this server takes at "
                f"most {min(self.max_prompt, self.max_context - 1)}",
                param="messages" if chat else "prompt",
                code="context_length_exceeded",
            )
        name = "max_tokens"
        if chat and data.get("max_completion_tokens") is not None:
            name = "max_completion_tokens"
        if data.get(name) is None:
            max_tokens = min(self.config.default_max_tokens, room)
        else:
            max_tokens = number(name, None, 1, self.config.max_tokens_limit, integer=True)
            if max_tokens > room:
                raise ApiError(
                    400,
                    f"prompt ({len(prompt_ids)} tokens) + {name} ({max_tokens}) "
                    f"exceed the context length {self.max_context}",
                    param=name,
                    code="context_length_exceeded",
                )
        # llama.cpp's defaults, as `mulfree generate` (mulfree.engine.sampler.SamplerConfig)
        temperature = float(number("temperature", 0.8, 0.0, 2.0))
        top_p = float(number("top_p", 0.95, 0.0, 1.0))
        if top_p <= 0:
            raise ApiError(400, "'top_p' must be > 0", param="top_p")
        top_k = number("top_k", 40, -1, self.backend.vocab_size, integer=True)
        min_p = float(number("min_p", 0.05, 0.0, 1.0))
        seed = data.get("seed")
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little") >> 1
        elif isinstance(seed, bool) or not isinstance(seed, int):
            raise ApiError(400, "'seed' must be an integer", param="seed")
        stop = data.get("stop")
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        if (
            not isinstance(stop, list)
            or len(stop) > MAX_STOP
            or not all(isinstance(s, str) and s for s in stop)
        ):
            raise ApiError(
                400,
                f"'stop' must be a non-empty string or a list of at most "
                f"{MAX_STOP} non-empty strings",
                param="stop",
            )
        stream = data.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "'stream' must be a boolean", param="stream")
        opts = data.get("stream_options") or {}
        if not isinstance(opts, dict):
            raise ApiError(400, "'stream_options' must be an object", param="stream_options")
        ignore_eos = data.get("ignore_eos", False)
        if not isinstance(ignore_eos, bool):
            raise ApiError(400, "'ignore_eos' must be a boolean", param="ignore_eos")
        return Job(
            prompt_ids,
            max_tokens,
            SamplingParams(temperature, top_p, max(top_k, 0), min_p),
            seed % (1 << 63),
            tuple(stop),
            stream,
            bool(opts.get("include_usage")),
            ignore_eos,
        )

    def _check_text(self, text: str, param: str) -> None:
        """Refuse, before tokenizing, text that is not valid Unicode or that surely has more
        tokens than a prompt may (more bytes than max_prompt tokens of the longest token)."""
        try:
            n = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise ApiError(
                400, f"'{param}' is not valid Unicode (it holds a lone surrogate)", param=param
            ) from None
        if n > self.max_prompt_bytes:
            raise ApiError(
                400,
                f"the {param} has {n} bytes; this server takes at most {self.max_prompt_bytes} "
                f"({self.max_prompt} tokens)",
                param=param,
                code="context_length_exceeded",
            )

    def _encode(self, text: str, param: str) -> list[int]:
        """Token ids of `text`; a text whose prefix already has too many tokens is refused
        after tokenizing only that prefix (see PREFIX_CHARS_PER_TOKEN)."""
        probe = self.max_prompt * PREFIX_CHARS_PER_TOKEN
        if len(text) > probe:
            n = len(self.backend.encode(text[:probe]))
            if n > self.max_prompt + PREFIX_SLACK_TOKENS:
                raise ApiError(
                    400,
                    f"the {param} has more than {self.max_prompt + PREFIX_SLACK_TOKENS} tokens "
                    f"(its first {probe} characters alone have {n}); this server takes at most "
                    f"{self.max_prompt}",
                    param=param,
                    code="context_length_exceeded",
                )
        return self.backend.encode(text)

    def _completion_prompt(self, data: dict) -> list[int]:
        prompt = data.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            self._check_text(prompt, "prompt")
            return self._encode(prompt, "prompt")
        if isinstance(prompt, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt
        ):
            if any(not 0 <= t < self.backend.vocab_size for t in prompt):
                raise ApiError(400, "a prompt token id is outside the vocabulary", param="prompt")
            return list(prompt)
        if prompt is None:
            raise ApiError(400, "'prompt' is required", param="prompt")
        raise ApiError(
            400,
            "'prompt' must be a string, a list of token ids, or a list of one of "
            "those (one prompt per request)",
            param="prompt",
        )

    def _chat_prompt(self, data: dict) -> list[int]:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list", param="messages")
        clean = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise ApiError(
                    400, f"messages[{i}] needs a 'role' among {', '.join(ROLES)}", param="messages"
                )
            content = m.get("content")
            if isinstance(content, list):  # content parts: text only
                if not all(
                    isinstance(p, dict)
                    and p.get("type") == "text"
                    and isinstance(p.get("text"), str)
                    for p in content
                ):
                    raise ApiError(
                        400, f"messages[{i}].content parts must be text parts", param="messages"
                    )
                content = "".join(p["text"] for p in content)
            elif content is None and m["role"] == "assistant":
                content = ""
            if not isinstance(content, str):
                raise ApiError(400, f"messages[{i}].content must be a string", param="messages")
            clean.append({"role": m["role"], "content": content})
        for m in clean:  # before the template: a huge message is refused without copying it
            self._check_text(m["content"], "messages")
        text = self.backend.chat_prompt(clean)
        self._check_text(text, "messages")
        return self._encode(text, "messages")

    # --- generation ------------------------------------------------------------------------
    def _submit(self, job: Job) -> GenRequest:
        req = GenRequest(
            job.prompt_ids,
            job.max_tokens,
            job.params,
            job.seed,
            job.stop,
            job.ignore_eos,
            timeout_s=self.config.request_timeout_s,
        )
        try:
            self.scheduler.submit(req)
        except QueueFull:
            raise ApiError(
                429,
                f"the server is busy: all {self.scheduler.capacity} request slots "
                "are taken; retry shortly",
                type_="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            ) from None
        return req

    @staticmethod
    def _failure(ev: Failed) -> ApiError:
        if ev.kind == "timeout":
            return ApiError(408, ev.message, type_="timeout_error", code="timeout")
        return ApiError(500, ev.message, type_="server_error", code="server_error")

    async def _collect(self, request: Request, req: GenRequest):
        """Wait for a non-streaming request; cancel it if the client goes away meanwhile.

        The client is checked every DISCONNECT_POLL_S seconds of wall time, whether or not
        tokens keep arriving."""
        loop = asyncio.get_running_loop()
        text = []
        next_check = loop.time() + DISCONNECT_POLL_S
        while True:
            try:
                wait = max(0.0, next_check - loop.time())
                ev = await asyncio.wait_for(req.events.get(), wait)
            except TimeoutError:
                ev = None
            if loop.time() >= next_check:
                if await request.is_disconnected():
                    self.scheduler.cancel(req)
                    return None, None
                next_check = loop.time() + DISCONNECT_POLL_S
            if isinstance(ev, Finished):
                return "".join(text), ev
            if isinstance(ev, Failed):
                raise self._failure(ev)
            if ev is not None:
                text.append(ev.text)

    async def _generate(self, request: Request, chat: bool):
        try:
            self._auth(request)
            self._require_json(request)
        except ApiError:
            await self._drain(request.stream())
            raise
        data = await self._read_json(request)
        self._check_model(data)
        if self.energy is not None and (spent := self.energy.exhausted()):
            raise ApiError(503, spent, type_="server_error", code="energy_budget_exhausted")
        # Tokenizing a long prompt takes a while: keep it off the event loop.
        to_ids = self._chat_prompt if chat else self._completion_prompt
        large = int(request.headers.get("content-length") or 0) > TRIM_AFTER_BYTES
        try:
            ids = await asyncio.to_thread(to_ids, data)
        finally:
            if large:  # return the parse/tokenize buffers of a large request to the OS
                await asyncio.to_thread(trim_heap)
        job = self._job(data, ids, chat=chat)
        metered = self.energy.mark(self.metrics.completion_tokens) if self.energy else None
        req = self._submit(job)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if job.stream:
            return _GenerationStream(
                self._sse(req, job, rid, created, chat),
                on_close=lambda: self.scheduler.cancel(req),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            text, fin = await self._collect(request, req)
        except BaseException:
            self.scheduler.cancel(req)
            raise
        if fin is None:  # client gone: nobody to answer
            return PlainTextResponse("", status_code=499)
        usage = _usage(fin.prompt_tokens, fin.completion_tokens)
        if metered is not None:  # this request's share of the measured energy
            usage.update(
                self.energy.charge(metered, self.metrics.completion_tokens, fin.completion_tokens)
            )
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": fin.reason,
            }
            body = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": self.backend.model_id,
                "choices": [choice],
                "usage": usage,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": fin.reason}
            body = {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": self.backend.model_id,
                "choices": [choice],
                "usage": usage,
            }
        return JSONResponse(body)

    async def _sse(self, req: GenRequest, job: Job, rid: str, created: int, chat: bool):
        obj = "chat.completion.chunk" if chat else "text_completion"
        model = self.backend.model_id

        def chunk(delta_text: str | None, finish: str | None, *, role=False) -> str:
            if chat:
                delta = (
                    {"role": "assistant", "content": ""}
                    if role
                    else ({} if delta_text is None else {"content": delta_text})
                )
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {
                    "index": 0,
                    "text": delta_text or "",
                    "logprobs": None,
                    "finish_reason": finish,
                }
            body = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [choice],
            }
            if job.include_usage:
                body["usage"] = None
            return f"data: {json.dumps(body)}\n\n"

        finished = False
        try:
            if chat:
                yield chunk(None, None, role=True)
            while True:
                ev = await req.events.get()
                if isinstance(ev, Finished):
                    yield chunk(None, ev.reason)
                    if job.include_usage:
                        body = {
                            "id": rid,
                            "object": obj,
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": _usage(ev.prompt_tokens, ev.completion_tokens),
                        }
                        yield f"data: {json.dumps(body)}\n\n"
                    break
                if isinstance(ev, Failed):
                    err = self._failure(ev)
                    body = {
                        "error": {
                            "message": err.message,
                            "type": err.type,
                            "param": None,
                            "code": err.code,
                        }
                    }
                    yield f"data: {json.dumps(body)}\n\n"
                    break
                yield chunk(ev.text, None)
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            # A client that disconnects mid-stream cancels this generator: free its slot now.
            if not finished:
                self.scheduler.cancel(req)

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
        self._auth(request)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request):
        self._auth(request)
        if request.path_params["model_id"] != self.backend.model_id:
            raise ApiError(
                404,
                f"the model {request.path_params['model_id']!r} does not exist",
                param="model",
                code="model_not_found",
            )
        return JSONResponse(self._model_card())

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
        return HTMLResponse(PAGE_HTML.replace("{{MODEL_ID}}", literal))


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
            except _ClientGone:  # one line, not a traceback: slow or flaky clients are normal
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
