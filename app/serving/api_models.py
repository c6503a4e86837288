"""What the OpenAI-compatible API accepts: request bodies, their limits, and the error shape.

Every field is checked here, before anything reaches the store or the engine, to the ranges
OpenAI documents for the same field (temperature 0-2, top_p 0-1, a signed 64-bit seed, up to
4 stop sequences, ...), plus what this server needs on top: a bounded body read before it is
parsed, a bounded nesting depth, and no text that a database or a tokenizer cannot hold (a
NUL character, a lone UTF-16 surrogate). A refusal is one line in OpenAI's error shape with
status 400 (413 for an oversized body), the same whichever database is behind the store.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 32  # our bodies nest 4 deep; a deeper one is no chat request
MAX_MESSAGES = 2048
MAX_STOP = 4  # OpenAI: "Up to 4 sequences"
MAX_STOP_CHARS = 256
MAX_NAME_CHARS = 256  # model names, user tags, completion ids

M = TypeVar("M", bound="BaseModel")


class ApiError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status,
            message,
            type,
            code,
            param,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> Response:
        headers = {"Retry-After": "1"} if self.status == 429 else None
        # ASCII-escaped: whatever a message quotes, rendering the error cannot fail
        return Response(
            json.dumps(self.body()),
            status_code=self.status,
            headers=headers,
            media_type="application/json",
        )


# -- request bodies ------------------------------------------------------------------------
# Constraints are written as types, so that the OpenAPI schema built from these models (and
# the fuzzing generated from it) knows them too.
Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Bias = Annotated[int, Field(ge=-100, le=100)]


class _Loose(BaseModel):
    """Clients send fields we do not use (OpenAI adds new ones often): ignore them."""

    model_config = ConfigDict(extra="ignore")


class ContentPart(_Loose):
    type: Literal["text"]  # images and audio: this server serves a text model
    text: str | None = None


class ChatMessage(_Loose):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content)
        return self.content or ""


class StreamOptions(_Loose):
    include_usage: bool = False


class CompletionRequest(_Loose):
    model: str = Field(max_length=MAX_NAME_CHARS)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)  # 0: only the top token
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: Stop | list[Stop] | None = Field(default=None, max_length=MAX_STOP)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1)  # one choice per request
    # Accepted for compatibility and not applied; checked to OpenAI's ranges all the same.
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Bias] | None = Field(default=None, max_length=1024)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    store: bool | None = None  # OpenAI's flag; False: answer, do not keep


class FeedbackRequest(_Loose):
    """One of: a rating, a correction, or a pick between two completions."""

    completion_id: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    rating: Literal[1, -1] | None = None
    reason: str = Field(default="", max_length=2000)
    correction: str | None = None
    completion_ids: list[str] | None = Field(default=None, min_length=2, max_length=2)
    choice: Literal["first", "second", "tie"] | None = None


def check_sizes(body: CompletionRequest, max_chars: int) -> list[str]:
    """Every message's text, each within `max_chars` (TUNELOOP_MAX_MESSAGE_CHARS)."""
    texts = []
    for i, message in enumerate(body.messages):
        text = message.text()
        if len(text) > max_chars:
            raise ApiError(
                400,
                f"messages.{i}.content is {len(text):,} characters; the limit is "
                f"{max_chars:,} (TUNELOOP_MAX_MESSAGE_CHARS).",
                param=f"messages.{i}.content",
                code="message_too_long",
            )
        texts.append(text)
    return texts


# -- reading a body --------------------------------------------------------------------------
async def read_body(request: Request, model: type[M], max_bytes: int) -> M:
    """The request's JSON body as `model`: at most `max_bytes` read, then every check above."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:  # a body without (or lying about) its length
            raise _too_large(max_bytes)
    # parsed and walked off the event loop: a large body must not hold up other streams
    value = await anyio.to_thread.run_sync(parse, bytes(raw))
    return validate(value, model)


def parse(raw: bytes) -> Any:
    """Bytes to JSON values, or a one-line 400: not UTF-8, not JSON, NaN, numbers of
    thousands of digits, nesting past MAX_DEPTH, NUL characters, lone surrogates."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "The request body is not valid UTF-8.") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as err:  # JSONDecodeError, and ints past Python's digit limit
        if isinstance(err, json.JSONDecodeError):
            raise ApiError(400, f"The request body is not valid JSON ({err.msg}).") from None
        raise ApiError(400, f"The request body holds an unusable value: {err}.") from None
    _check_values(value)
    return value


def validate(value: Any, model: type[M]) -> M:
    """Parsed JSON as `model`, or a one-line 400 naming the first bad field."""
    if not isinstance(value, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    try:
        return model.model_validate(value)
    except ValidationError as err:
        # the deepest error: for a union (`stop`, `content`) that is the branch that
        # matched the value's shape, not "should be a valid string"
        first = max(err.errors(), key=lambda e: len(e["loc"]))
        where = ".".join(str(p) for p in first["loc"] if not _is_union_branch(p))
        shown = _shown(where)
        param = shown if where else None
        raise ApiError(400, f"{shown}: {first['msg']}", param=param) from None


def _is_union_branch(part: object) -> bool:
    """Pydantic names the union member it tried (`str`, `list[ContentPart]`): not a field."""
    return isinstance(part, str) and (
        part in {"str", "int", "float", "bool"} or "[" in part or part.startswith("constrained-")
    )


def _no_constant(name: str) -> None:
    raise ApiError(400, f"The request body is not valid JSON ({name} is not a JSON number).")


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is over {max_bytes:,} bytes (TUNELOOP_API_MAX_BODY_BYTES).",
        code="request_too_large",
    )


def _too_deep() -> ApiError:
    return ApiError(400, f"The request body nests deeper than {MAX_DEPTH} levels.")


def _check_values(value: Any) -> None:
    """Walk the parsed body (iteratively: no recursion a body could exhaust)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise _too_deep()
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                path = f"{where}.{key}" if where else str(key)
                if isinstance(key, str):
                    _check_text(key, path)
                stack.append((child, depth + 1, path))


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        shown = _shown(where)
        raise ApiError(400, f"{shown}: text contains a NUL character.", param=shown)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = _shown(where)
        raise ApiError(
            400, f"{shown}: text contains a lone UTF-16 surrogate.", param=shown
        ) from None


def _shown(where: str) -> str:
    """A field path fit to echo back: the path may hold the client's own keys, which may be
    long or hold the very characters refused."""
    safe = where.encode("utf-8", "backslashreplace").decode("utf-8")
    safe = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in safe)
    return (safe[:80] + "...") if len(safe) > 80 else (safe or "body")


# -- the schema ------------------------------------------------------------------------------
def openapi_schema() -> dict[str, Any]:
    """An OpenAPI 3.1 description of the API's routes, built from the models above (the
    routes read their bodies themselves, so FastAPI cannot describe them): what the fuzz
    test generates requests from."""
    components: dict[str, Any] = {}
    for model in (CompletionRequest, FeedbackRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    error = {"description": "an error in OpenAI's shape"}

    def post(model: str, ok: str) -> dict[str, Any]:
        return {
            "post": {
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}
                    },
                },
                "responses": {"200": {"description": ok}, "400": error, "401": error},
            }
        }

    return {
        "openapi": "3.1.0",
        "info": {"title": "tuneloop OpenAI-compatible API", "version": "1"},
        "paths": {
            "/v1/models": {
                "get": {
                    "security": [{"bearer": []}],
                    "responses": {"200": {"description": "the models"}, "401": error},
                }
            },
            "/v1/models/{model_id}": {
                "get": {
                    "security": [{"bearer": []}],
                    "parameters": [
                        {
                            "name": "model_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": {"description": "one model"}, "404": error},
                }
            },
            "/v1/chat/completions": post("CompletionRequest", "a completion or its stream"),
            "/v1/feedback": post("FeedbackRequest", "the feedback taken"),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
