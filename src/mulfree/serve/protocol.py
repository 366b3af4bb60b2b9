"""The OpenAI API's request bodies as typed pydantic models: validation and the /openapi.json schema.

A body is checked here for types, ranges and unknown fields; what depends on the served model
(token ids inside its vocabulary, prompt + max_tokens within its context) is checked by the app.
Every field not modelled here is refused with a 400 naming it (`extra="forbid"`), so a client
never gets a 200 that silently ignored part of its request (`tools`, `response_format` other
than text, `suffix`, ...). `user` is accepted as the metadata it is.

Defaults of the sampling fields are None here: the app fills them from the one shared set,
`mulfree.engine.sampler.SamplerConfig()` (llama.cpp's, also `mulfree generate`'s and the page's).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_STOP = 4  # OpenAI allows up to 4 stop sequences
MAX_N = 16  # choices per prompt
MAX_TOP_LOGPROBS = 20  # OpenAI's chat limit (vLLM's default too)
MAX_PROMPTS = 64  # prompts in one completions request
ROLES = ("system", "developer", "user", "assistant", "tool")

StrictInt = Annotated[int, Field(strict=True)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False


class ResponseFormat(_Body):
    type: Literal["text"] = Field(description="only plain text; JSON modes are not supported")


class SamplingRequest(_Body):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = Field(None, description="the served model's id (or omitted)")
    max_tokens: StrictInt | None = Field(None, ge=1, description="default: the server's")
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: StrictInt | None = Field(None, ge=-1, description="0 or -1 = off")
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(
        None, gt=0, le=10, description="llama.cpp's repeat penalty (1 = off)"
    )
    repeat_last_n: StrictInt | None = Field(None, ge=0, le=4096, description="penalty window")
    logit_bias: dict[str, float] | None = Field(
        None, description="token id (as a string) -> bias in [-100, 100] added to its logit"
    )
    seed: StrictInt | None = None
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP} strings")
    n: StrictInt = Field(1, ge=1, le=MAX_N, description="choices per prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    echo: bool = False
    response_format: ResponseFormat | None = None
    user: str | None = Field(None, description="an end-user id (metadata, not used)")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else v
        if stops is not None and (len(stops) > MAX_STOP or not all(stops)):
            raise ValueError(f"must be a non-empty string or at most {MAX_STOP} non-empty strings")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v):
        for key, bias in (v or {}).items():
            if not key.isdigit():
                raise ValueError(f"keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"biases must be in [-100, 100], got {bias}")
        return v

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(SamplingRequest):
    """POST /v1/completions."""

    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]] = Field(
        description=f"a string, token ids, or a list of up to {MAX_PROMPTS} of either"
    )
    logprobs: StrictInt | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="log-probabilities of the chosen token and "
        "this many alternatives per position (with echo: the prompt's too)"
    )  # fmt: skip

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], str | list) and len(v) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        if isinstance(v, list) and not v:
            raise ValueError("must not be an empty list")
        return v

    def prompts(self) -> list[str | list[int]]:
        """The prompts of the request, one or more."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal[ROLES]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("messages")
    @classmethod
    def _contents(cls, v):
        for i, m in enumerate(v):
            if m.content is None and m.role != "assistant":
                raise ValueError(f"messages[{i}].content is required for role {m.role!r}")
        return v


_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|.*\[.*\])$")


class RequestError(Exception):
    """A body that does not validate: `message` names the field, `param` is its top-level name."""

    def __init__(self, message: str, param: str | None):
        super().__init__(message)
        self.message, self.param = message, param


def parse(cls: type[_Body], data: Any) -> _Body:
    """`cls` validated from a decoded JSON body, or RequestError for its first problem."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = [str(x) for x in err["loc"] if not isinstance(x, int)]
        loc = [x for x in loc if not _TYPE_TAG.match(x)] or ["body"]  # union branch names
        where = ".".join(loc)
        if err["type"] == "extra_forbidden":
            msg = f"'{where}' is not supported by this server"
        elif err["type"] == "missing":
            msg = f"'{where}' is required"
        else:
            msg = f"'{where}': {err['msg'].removeprefix('Value error, ')}"
        raise RequestError(msg, loc[0]) from None


def openapi() -> dict:
    """An OpenAPI 3.1 document of the generation routes, from the request models."""
    from pydantic.json_schema import models_json_schema

    _, defs = models_json_schema(
        [(CompletionRequest, "validation"), (ChatCompletionRequest, "validation")],
        ref_template="#/components/schemas/{model}",
    )

    def post(summary: str, schema: str) -> dict:
        return {
            "post": {
                "summary": summary,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                    },
                },
                "responses": {
                    "200": {"description": "the completion (JSON, or server-sent events)"},
                    "400": {"description": "a bad or unsupported field, named in error.param"},
                    "429": {"description": "all request slots are taken"},
                },
            }
        }

    from mulfree import __version__

    return {
        "openapi": "3.1.0",
        "info": {"title": "mulfree OpenAI-compatible API", "version": __version__},
        "paths": {
            "/v1/completions": post("text completion", "CompletionRequest"),
            "/v1/chat/completions": post("chat completion", "ChatCompletionRequest"),
            "/v1/models": {"get": {"summary": "the served model",
                                   "responses": {"200": {"description": "model list"}}}},
        },  # fmt: skip
        "components": {"schemas": defs["$defs"]},
    }
