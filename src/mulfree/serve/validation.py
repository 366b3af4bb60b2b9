"""What a request must be before it is served: the protocol checks between the HTTP body and
the scheduler's Jobs (the routes are mulfree.serve.app; the body's schema, mulfree.serve.protocol).

`RequestChecks` holds this server's limits and refuses, each with one OpenAI-style `ApiError`:
a missing or wrong API key (401), a body that is not `Content-Type: application/json` (415),
too large (413), too slow to arrive (408), malformed JSON, nested too deeply or holding a lone
surrogate (400); an unknown model (404); sampling fields outside the model's vocabulary, a prompt
over its token or byte cap, prompt + max_tokens over the context (400). What passes becomes one
`Job` per (prompt, choice).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from mulfree.engine.sampler import SamplingParams
from mulfree.serve.backends import Backend
from mulfree.serve.config import ServeConfig
from mulfree.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestError,
    SamplingRequest,
    parse,
)

# Refused bodies (too large, unauthenticated) are read and dropped up to this size so that the
# client gets the error response; beyond it the connection is simply closed.
DRAIN_BYTES = 64 << 20


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


def longest_token_bytes(tokenizer) -> int:
    try:
        vocab = tokenizer.get_vocab()
        longest = max(len(t.encode("utf-8", "surrogatepass")) for t in vocab)
    except Exception:  # no vocabulary to look at (a custom tokenizer): a generous constant
        longest = FALLBACK_TOKEN_BYTES
    return PROMPT_BYTES_SLACK * max(longest, 1)


class ClientGone(Exception):
    """The client closed the connection before its request body arrived."""


class ApiError(Exception):
    """A refused request: its HTTP status and the OpenAI-style error object it is answered with."""

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

class RequestChecks:
    """This server's limits on a request (from its config and backend) and the checks of one."""

    def __init__(self, config: ServeConfig, backend: Backend, max_context: int):
        self.config = config
        self.backend = backend
        self.max_context = max_context  # prompt + generated tokens
        self.max_prompt = min(config.max_prompt_tokens or max_context, max_context)
        # A prompt longer than this many UTF-8 bytes has more than max_prompt tokens whatever
        # its text, since no token covers more bytes than the tokenizer's longest one; it is
        # refused before the tokenizer runs (tokenizing 1 MB takes seconds and ~700 MB).
        self.max_prompt_bytes = min(
            config.max_body_bytes, self.max_prompt * longest_token_bytes(backend.tokenizer)
        )

    async def body(self, request: Request, chat: bool) -> CompletionRequest | ChatCompletionRequest:
        """The typed body of a generation request: authenticated, JSON, valid, for this model
        (a refused body is drained first, see `drain`)."""
        try:
            self.auth(request)
            self.require_json(request)
        except ApiError:
            await self.drain(request.stream())
            raise
        data = await self.read_json(request)
        try:
            body = parse(ChatCompletionRequest if chat else CompletionRequest, data)
        except RequestError as e:
            raise ApiError(400, e.message, param=e.param) from None
        self.check_model(body.model)
        return body

    def auth(self, request: Request) -> None:
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
    async def drain(chunks) -> None:
        """Read and drop the rest of a refused body (up to DRAIN_BYTES).

        Closing a connection whose request body is still unread makes the kernel send a reset,
        which can destroy the error response before the client reads it."""
        n = 0
        async for chunk in chunks:
            n += len(chunk)
            if n > DRAIN_BYTES:
                return

    @staticmethod
    def require_json(request: Request) -> None:
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

    async def read_json(self, request: Request) -> dict:
        limit = self.config.max_body_bytes
        too_big = ApiError(413, f"request body exceeds {limit} bytes", code="request_too_large")
        declared = request.headers.get("content-length")
        try:
            declared = None if declared is None else int(declared)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
        chunks = request.stream()
        if declared is not None and declared > limit:
            await self.drain(chunks)
            raise too_big
        body = bytearray()
        timeout = self.config.body_timeout_s
        try:
            async with asyncio.timeout(timeout):  # the whole body, however slowly it trickles
                async for chunk in chunks:
                    body += chunk
                    if len(body) > limit:
                        await self.drain(chunks)
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
            raise ClientGone() from None
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

    def check_model(self, model: str | None) -> None:
        if model is None:
            return  # the one served model
        if model != self.backend.model_id:
            raise ApiError(
                404,
                f"the model {model!r} does not exist; this server serves {self.backend.model_id!r}",
                param="model",
                code="model_not_found",
            )

    def params(self, body: SamplingRequest) -> SamplingParams:
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

    def jobs(self, body: SamplingRequest, prompts: list[list[int]], echoes: list[str], *,
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
        params = self.params(body)
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

    def check_text(self, text: str, param: str) -> None:
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

    def encode(self, text: str, param: str) -> list[int]:
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

    def completion_prompts(self, body: CompletionRequest) -> tuple[list[list[int]], list[str]]:
        """Token ids of each prompt, and its text (for echo)."""
        ids, texts = [], []
        for p in body.prompts():
            if isinstance(p, str):
                self.check_text(p, "prompt")
                ids.append(self.encode(p, "prompt"))
                texts.append(p)
            else:
                if any(not 0 <= t < self.backend.vocab_size for t in p):
                    raise ApiError(400, "a prompt token id is outside the vocabulary", param="prompt")
                ids.append(list(p))
                texts.append(self.backend.decode(list(p)) if body.echo else "")
        return ids, texts

    def chat_prompts(self, body: ChatCompletionRequest) -> tuple[list[list[int]], list[str]]:
        clean = [{"role": m.role, "content": m.text()} for m in body.messages]
        for m in clean:  # before the template: a huge message is refused without copying it
            self.check_text(m["content"], "messages")
        text = self.backend.chat_prompt(clean)
        self.check_text(text, "messages")
        # echo (vLLM's): the reply continues a final assistant message, which is repeated
        echo = clean[-1]["content"] if clean[-1]["role"] == "assistant" else ""
        return [self.encode(text, "messages")], [echo]
