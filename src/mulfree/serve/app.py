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
import os
import time
import uuid
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from mulfree.engine.sampler import SamplerConfig, SamplingParams, TokenLogprob
from mulfree.kernels.memory import trim_heap
from mulfree.serve.backends import Backend
from mulfree.serve.config import ServeConfig
from mulfree.serve.metrics import Metrics
from mulfree.serve.page import PAGE_HTML
from mulfree.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestError,
    SamplingRequest,
    openapi,
    parse,
)
from mulfree.serve.scheduler import Failed, Finished, GenRequest, QueueFull, Scheduler

ENDPOINTS = ("/", "/health", "/metrics", "/openapi.json", "/v1/models", "/v1/completions",
             "/v1/chat/completions")  # fmt: skip
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
    """One choice of a validated generation request, before submission."""

    index: int  # the choice's index in the response
    prompt_ids: list[int]  # shared by the choices of one prompt
    max_tokens: int
    params: SamplingParams
    seed: int
    stop: tuple[str, ...]
    ignore_eos: bool
    logprobs: int | None  # None: no logprobs; else this many alternatives per token
    prompt_logprobs: bool  # the prompt's too (completions' echo + logprobs)
    echo: str  # text put before the generated text ("" without echo)


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
        self._token_texts: dict[int, str] = {}  # token id -> its text, for logprobs

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

    def _check_model(self, model: str | None) -> None:
        if model is None:
            return  # the one served model
        if model != self.backend.model_id:
            raise ApiError(
                404,
                f"the model {model!r} does not exist; this server serves {self.backend.model_id!r}",
                param="model",
                code="model_not_found",
            )

    def _params(self, body: SamplingRequest) -> SamplingParams:
        """The request's sampling: its fields over the shared defaults (SamplerConfig())."""
        given = {
            "temperature": body.temperature,
            "top_p": body.top_p,
            "top_k": None if body.top_k is None else max(body.top_k, 0),
            "min_p": body.min_p,
            "repeat_penalty": body.repetition_penalty,
            "repeat_last_n": body.repeat_last_n,
            "presence_penalty": body.presence_penalty,
            "frequency_penalty": body.frequency_penalty,
        }
        vocab = self.backend.vocab_size
        if body.top_k is not None and body.top_k > vocab:
            raise ApiError(400, f"'top_k' must be at most the vocabulary size {vocab}", param="top_k")
        bias = []
        for key, b in (body.logit_bias or {}).items():
            if int(key) >= vocab:
                raise ApiError(400, f"'logit_bias': token id {key} is outside the vocabulary "
                               f"(size {vocab})", param="logit_bias")  # fmt: skip
            bias.append((int(key), float(b)))
        return SamplingParams.defaults(
            **{k: v for k, v in given.items() if v is not None}, logit_bias=tuple(bias)
        )

    def _jobs(self, body: SamplingRequest, prompts: list[list[int]], echoes: list[str], *,
              chat: bool) -> list[Job]:  # fmt: skip
        """One Job per (prompt, choice), in the API's choice order (prompt-major)."""
        param = "messages" if chat else "prompt"
        if chat:
            top = body.top_logprobs
            if top is not None and not body.logprobs:
                raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
            logprobs = (top or 0) if body.logprobs else None
        else:
            logprobs = body.logprobs
        prompt_logprobs = body.echo and logprobs is not None and not chat
        if body.stream and prompt_logprobs:
            raise ApiError(400, "'echo' with 'logprobs' is not supported when streaming",
                           param="echo")  # fmt: skip
        params = self._params(body)
        name, limit = "max_tokens", body.max_tokens
        if chat and body.max_completion_tokens is not None:
            name, limit = "max_completion_tokens", body.max_completion_tokens
        if limit is not None and limit > self.config.max_tokens_limit:
            raise ApiError(400, f"'{name}' must be at most {self.config.max_tokens_limit}, got "
                           f"{limit}", param=name)  # fmt: skip
        seed = body.seed
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little") >> 1
        jobs = []
        for j, ids in enumerate(prompts):
            if not ids:
                bos = getattr(self.backend.tokenizer, "bos_token_id", None)
                if bos is None:
                    raise ApiError(400, "the prompt is empty", param=param)
                ids = [bos]
            room = self.max_context - len(ids)
            if len(ids) > self.max_prompt or room < 1:
                raise ApiError(
                    400,
                    f"the prompt has {len(ids)} tokens; this server takes at "
                    f"most {min(self.max_prompt, self.max_context - 1)}",
                    param=param,
                    code="context_length_exceeded",
                )
            if limit is None:
                max_tokens = min(self.config.default_max_tokens, room)
            elif limit > room:
                raise ApiError(
                    400,
                    f"prompt ({len(ids)} tokens) + {name} ({limit}) "
                    f"exceed the context length {self.max_context}",
                    param=name,
                    code="context_length_exceeded",
                )
            else:
                max_tokens = limit
            for k in range(body.n):
                jobs.append(Job(
                    index=len(jobs), prompt_ids=ids, max_tokens=max_tokens, params=params,
                    seed=(seed + k) % (1 << 63), stop=body.stops, ignore_eos=body.ignore_eos,
                    logprobs=logprobs, prompt_logprobs=prompt_logprobs,
                    echo=echoes[j] if body.echo else "",
                ))  # fmt: skip
        return jobs

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

    def _completion_prompts(self, body: CompletionRequest) -> tuple[list[list[int]], list[str]]:
        """Token ids of each prompt, and its text (for echo)."""
        ids, texts = [], []
        for p in body.prompts():
            if isinstance(p, str):
                self._check_text(p, "prompt")
                ids.append(self._encode(p, "prompt"))
                texts.append(p)
            else:
                if any(not 0 <= t < self.backend.vocab_size for t in p):
                    raise ApiError(400, "a prompt token id is outside the vocabulary", param="prompt")
                ids.append(list(p))
                texts.append(self.backend.decode(list(p)) if body.echo else "")
        return ids, texts

    def _chat_prompts(self, body: ChatCompletionRequest) -> tuple[list[list[int]], list[str]]:
        clean = [{"role": m.role, "content": m.text()} for m in body.messages]
        for m in clean:  # before the template: a huge message is refused without copying it
            self._check_text(m["content"], "messages")
        text = self.backend.chat_prompt(clean)
        self._check_text(text, "messages")
        # echo (vLLM's): the reply continues a final assistant message, which is repeated
        echo = clean[-1]["content"] if clean[-1]["role"] == "assistant" else ""
        return [self._encode(text, "messages")], [echo]

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
        try:
            self._auth(request)
            self._require_json(request)
        except ApiError:
            await self._drain(request.stream())
            raise
        data = await self._read_json(request)
        try:
            body = parse(ChatCompletionRequest if chat else CompletionRequest, data)
        except RequestError as e:
            raise ApiError(400, e.message, param=e.param) from None
        self._check_model(body.model)
        if self.energy is not None and (spent := self.energy.exhausted()):
            raise ApiError(503, spent, type_="server_error", code="energy_budget_exhausted")
        # Tokenizing a long prompt takes a while: keep it off the event loop.
        to_ids = self._chat_prompts if chat else self._completion_prompts
        large = int(request.headers.get("content-length") or 0) > TRIM_AFTER_BYTES
        try:
            prompts, echoes = await asyncio.to_thread(to_ids, body)
        finally:
            if large:  # return the parse/tokenize buffers of a large request to the OS
                await asyncio.to_thread(trim_heap)
        jobs = self._jobs(body, prompts, echoes, chat=chat)
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
