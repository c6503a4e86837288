"""The OpenAI-compatible HTTP API: `/v1/models`, `/v1/chat/completions`, `/v1/feedback`.

Served by `tuneloop serve` on the chat app's own server and port (its routes are handed to
Gradio's FastAPI app before it starts), so a team points Open WebUI, LibreChat or its own
scripts at `http://HOST:PORT/v1` and there is one address, one process and one model in
memory. Every completion goes through the same `ChatService` calls as the page (a new
conversation of the key's owner, the reply stored with the version that wrote it), and
`/v1/feedback` through the same rating, correction and pick calls as the page's buttons.

Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the
status codes OpenAI clients expect; nothing here ever answers with a traceback.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.serving import frontends
from app.serving.admission import Slots
from app.serving.chat import CHAT_ROLES, ChatError, ChatService, ChatState, Turn
from app.serving.engine import CURRENT, ContextTooLong, Reply, SamplingParams, ServingError
from feedback.errors import FeedbackError
from feedback.records import UserInfo

log = logging.getLogger(__name__)

SERVING_MODEL = "tuneloop"  # whatever CURRENT names when the request arrives
BASE_MODEL = "tuneloop:base"  # the bare base model, no adapter
COMPLETION_PREFIX = "chatcmpl-"


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

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status == 429 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


# -- request bodies ------------------------------------------------------------------------
class _Loose(BaseModel):
    """Clients send fields we do not use (OpenAI adds new ones often): ignore them."""

    model_config = ConfigDict(extra="ignore")


class ContentPart(_Loose):
    type: str
    text: str | None = None


class ChatMessage(_Loose):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            if any(p.type != "text" for p in self.content):
                raise ApiError(400, "only text content is supported", param="messages")
            return "".join(p.text or "" for p in self.content)
        return self.content or ""


class StreamOptions(_Loose):
    include_usage: bool = False


class CompletionRequest(_Loose):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    store: bool | None = None  # OpenAI's flag; False: answer, do not keep


class FeedbackRequest(_Loose):
    """One of: a rating, a correction, or a pick between two completions."""

    completion_id: str | None = None
    rating: Literal[1, -1] | None = None
    reason: str = Field(default="", max_length=2000)
    correction: str | None = None
    completion_ids: list[str] | None = Field(default=None, min_length=2, max_length=2)
    choice: Literal["first", "second", "tie"] | None = None


# -- the API ---------------------------------------------------------------------------------
@dataclass
class _Call:
    """A completion being answered: who asked, for what, and the reply underway."""

    user: UserInfo
    model: str
    state: ChatState
    reply: Reply
    completion_id: str
    created: int
    helper: bool = False  # a front end's helper call: answered, never stored
    candidate_in: int | None = None  # a regenerated turn: stored beside this conversation


class OpenAIApi:
    """Request handling for the routes; blocking work runs in worker threads."""

    def __init__(
        self,
        service: ChatService,
        *,
        versions: Callable[[], list[str]],
        max_active: int = 16,
        trusted_frontends: frozenset[str] = frozenset(),
        helper_max_tokens: int = 128,
        wait_seconds: float = 0.0,
    ) -> None:
        self.service = service
        self.versions = versions
        self.max_active = max_active
        self.slots = Slots(max_active, wait_seconds=wait_seconds)
        self.frontends = frontends.Frontends(service.store, trusted=trusted_frontends)
        self.helper_max_tokens = helper_max_tokens

    # -- who is asking ---------------------------------------------------------------------
    def authenticate(self, request: Request) -> UserInfo:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(
                401,
                "Missing API key: send it as 'Authorization: Bearer KEY' "
                "(an operator issues one with `tuneloop users key NAME`).",
                code="invalid_api_key",
            )
        user = self.service.store.user_for_api_key(key.strip())
        if user is None:
            raise ApiError(401, "Incorrect or revoked API key.", code="invalid_api_key")
        if user.role not in CHAT_ROLES:
            raise ApiError(
                403,
                f"{user.role}s rank pairs in Argilla; the API is for experts and operators.",
                type="permission_error",
                code="permission_denied",
            )
        return user

    # -- models ----------------------------------------------------------------------------
    def models(self) -> dict[str, Any]:
        now = int(time.time())
        ids = [SERVING_MODEL, BASE_MODEL, *self.versions(), frontends.TASK_MODEL]
        return {
            "object": "list",
            "data": [
                {"id": i, "object": "model", "created": now, "owned_by": "tuneloop"} for i in ids
            ],
        }

    def _adapter(self, model: str) -> str | None:
        if model in (SERVING_MODEL, frontends.TASK_MODEL):
            return CURRENT
        if model == BASE_MODEL:
            return None
        if model in self.versions():
            return model
        raise ApiError(
            404,
            f"The model {model!r} does not exist; GET /v1/models lists them "
            f"({SERVING_MODEL!r} is the version being served).",
            code="model_not_found",
            param="model",
        )

    # -- completions -----------------------------------------------------------------------
    def _params(self, body: CompletionRequest) -> SamplingParams:
        default = self.service.params
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise ApiError(400, "stop takes up to 4 non-empty strings", param="stop")
        return SamplingParams(
            max_new_tokens=body.max_completion_tokens or body.max_tokens or default.max_new_tokens,
            temperature=default.temperature if body.temperature is None else body.temperature,
            top_p=default.top_p if body.top_p is None else body.top_p,
            stop=tuple(stop),
            seed=body.seed,
        )

    def is_helper(self, body: CompletionRequest) -> bool:
        """Whether the request is a front end's helper call (`app.serving.frontends`)."""
        texts = [(m.role, m.content if isinstance(m.content, str) else "") for m in body.messages]
        return frontends.is_helper(model=body.model, store=body.store, texts=texts)

    def start(self, user: UserInfo, body: CompletionRequest, headers: Any = None) -> _Call:
        """Validate, then commit the user's message and start the reply (a worker thread).

        A helper call is only answered; a trusted front end's request is its end user's,
        in its chat's conversation (`app.serving.frontends`).
        """
        adapter = self._adapter(body.model)
        params = self._params(body)
        turns: list[Turn] = []
        for m in body.messages:
            role = "system" if m.role == "developer" else m.role
            turns.append(Turn(role, m.text()))
        if turns[-1].role != "user":
            raise ApiError(400, "The last message must be the user's.", param="messages")
        helper = self.is_helper(body)
        if helper:
            params = frontends.helper_params(params, self.helper_max_tokens)
        history = [{"role": t.role, "content": t.content} for t in turns]
        engine = self.service.engine
        try:
            if not helper:  # a helper prompt holds the whole chat: only the context limits it
                self.service.check_message(turns[-1].content)
            engine.build_prompt(history, params.max_new_tokens)  # refuse before storing
        except ContextTooLong as err:
            raise ApiError(400, str(err), code="context_length_exceeded", param="messages") from err
        except (ServingError, ChatError) as err:
            raise ApiError(400, str(err), param="messages") from err
        state = ChatState(turns=turns[:-1])
        candidate_in = None
        try:
            if helper:
                reply = engine.stream(history, params, adapter=adapter)
            else:
                caller = self.frontends.caller(user, headers or {})
                user = caller.user
                if user.status != "active":  # an operator disabled this end user's account
                    raise ApiError(
                        403,
                        "This account is disabled; ask your operator.",
                        type="permission_error",
                        code="permission_denied",
                    )
                earlier = [(t.role, t.content) for t in turns[:-1]]
                conversation_id, continues = self.frontends.conversation(
                    caller, earlier, turns[-1].content[:60]
                )
                if continues:
                    state.conversation_id = conversation_id
                    reply = self.service.start_reply(
                        user, state, turns[-1].content, params=params, adapter=adapter
                    )
                else:  # a regenerated or edited turn of the chat
                    candidate_in = conversation_id
                    reply = engine.stream(history, params, adapter=adapter)
        except (ServingError, ChatError, FeedbackError) as err:
            raise ApiError(400, str(err)) from err
        return _Call(
            user=user,
            model=body.model,
            state=state,
            reply=reply,
            completion_id=COMPLETION_PREFIX + uuid.uuid4().hex,
            created=int(time.time()),
            helper=helper,
            candidate_in=candidate_in,
        )

    def finish(self, call: _Call) -> dict[str, Any]:
        """Store the finished reply as the user's turn; returns the usage and finish reason."""
        info = call.reply.info
        assert info is not None
        if call.candidate_in is not None:
            self.frontends.record_candidate(call.candidate_in, info, call.completion_id)
        elif not call.helper:
            self.service.finish_reply(call.state, call.reply, completion_id=call.completion_id)
        prompt_tokens = self.service.engine.count_tokens(info.prompt)
        return {
            "finish_reason": "length" if info.finish_reason == "length" else "stop",
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": info.new_tokens,
                "total_tokens": prompt_tokens + info.new_tokens,
            },
            "adapter_version": info.adapter_version,
        }

    def complete(self, call: _Call) -> dict[str, Any]:
        """The whole reply at once (blocking)."""
        try:
            for _ in call.reply:
                pass
        except ServingError as err:
            raise ApiError(500, f"The model failed: {err}", type="server_error") from err
        done = self.finish(call)
        return {
            "id": call.completion_id,
            "object": "chat.completion",
            "created": call.created,
            "model": call.model,
            "system_fingerprint": _fingerprint(done["adapter_version"]),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": call.reply.text},
                    "logprobs": None,
                    "finish_reason": done["finish_reason"],
                }
            ],
            "usage": done["usage"],
            "adapter_version": done["adapter_version"],
        }

    async def stream(self, call: _Call, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
        pieces = iter(call.reply)

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            body = {
                "id": call.completion_id,
                "object": "chat.completion.chunk",
                "created": call.created,
                "model": call.model,
                "system_fingerprint": _fingerprint(call.reply.adapter_version),
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
                **extra,
            }
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                piece = await anyio.to_thread.run_sync(next, pieces, None)
                if piece is None:
                    break
                yield chunk({"content": piece})
            done = await anyio.to_thread.run_sync(self.finish, call)
            yield chunk({}, done["finish_reason"], adapter_version=done["adapter_version"])
            if include_usage:
                usage = chunk({}, None, usage=done["usage"])
                body = json.loads(usage[len("data: ") :])
                body["choices"] = []
                yield f"data: {json.dumps(body)}\n\n"
        except ServingError as err:
            error = ApiError(500, f"The model failed: {err}", type="server_error")
            yield f"data: {json.dumps(error.body())}\n\n"
        except Exception:  # never a traceback on the wire; the log has it
            log.exception("streaming completion %s failed", call.completion_id)
            error = ApiError(500, "Internal error; the server log says more.", type="server_error")
            yield f"data: {json.dumps(error.body())}\n\n"
        finally:
            call.reply.cancel()  # the client went away mid-reply: stop generating
            self.release(call.helper)
        yield "data: [DONE]\n\n"

    # -- feedback --------------------------------------------------------------------------
    def _owned(self, user: UserInfo, completion_id: str) -> int:
        try:
            info = self.service.store.owned_completion(completion_id=completion_id, user_id=user.id)
        except FeedbackError as err:
            raise ApiError(404, str(err), code="completion_not_found") from err
        return info.id

    def feedback(self, user: UserInfo, body: FeedbackRequest) -> dict[str, Any]:
        kinds = [
            k
            for k, given in (
                ("rating", body.rating is not None),
                ("correction", body.correction is not None),
                ("pick", body.choice is not None or body.completion_ids is not None),
            )
            if given
        ]
        if len(kinds) != 1:
            raise ApiError(
                400,
                "Send exactly one of: rating (1 or -1, with completion_id), correction (text, "
                "with completion_id), or choice (first|second|tie, with two completion_ids).",
            )
        kind = kinds[0]
        try:
            if kind == "pick":
                if body.choice is None or body.completion_ids is None:
                    raise ApiError(400, "A pick needs both completion_ids and choice.")
                first, second = (self._owned(user, i) for i in body.completion_ids)
                choice = {"first": "A", "second": "B", "tie": "tie"}[body.choice]
                message = self.service.pick_between(user, first, second, choice)
                return {"object": "feedback", "kind": kind, "message": message}
            if body.completion_id is None:
                raise ApiError(400, f"A {kind} needs completion_id.", param="completion_id")
            response_id = self._owned(user, body.completion_id)
            if kind == "rating":
                message = self.service.rate_response(
                    user, response_id, up=body.rating == 1, reason=body.reason
                )
            else:
                message = self.service.correct_response(user, response_id, body.correction or "")
        except (ChatError, FeedbackError) as err:
            raise ApiError(400, str(err)) from err
        return {
            "object": "feedback",
            "kind": kind,
            "completion_id": body.completion_id,
            "message": message,
        }

    # -- admission -------------------------------------------------------------------------
    async def admit(self, helper: bool = False) -> None:
        """Take a slot for one completion, waiting a few seconds for one (`Slots`), or
        refuse with 429."""
        if not await self.slots.take(helper=helper):
            raise ApiError(
                429,
                f"The server is answering {self.max_active} requests already; retry shortly.",
                type="rate_limit_error",
                code="server_busy",
            )

    def release(self, helper: bool = False) -> None:
        self.slots.give_back(helper=helper)


def _fingerprint(version: str | None) -> str:
    return f"tuneloop-{version or 'base'}"


async def _body(request: Request, model: type[BaseModel]) -> Any:
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.") from None
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(400, f"{where or 'body'}: {first['msg']}", param=where) from None


def api_routes(api: OpenAIApi) -> list[Any]:
    """The API's routes, to hand to the web app that serves the chat page."""
    router = APIRouter(prefix="/v1")

    async def guarded(work: Callable[[], Any]) -> Any:
        try:
            return await work()
        except ApiError as err:
            return err.response()
        except Exception:  # a bug must not leak a traceback to the client
            log.exception("API request failed")
            return ApiError(
                500, "Internal error; the server log says more.", type="server_error"
            ).response()

    @router.get("/models")
    async def models(request: Request) -> Any:
        async def work() -> Any:
            await anyio.to_thread.run_sync(api.authenticate, request)
            return JSONResponse(await anyio.to_thread.run_sync(api.models))

        return await guarded(work)

    @router.get("/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Any:
        async def work() -> Any:
            await anyio.to_thread.run_sync(api.authenticate, request)
            for entry in (await anyio.to_thread.run_sync(api.models))["data"]:
                if entry["id"] == model_id:
                    return JSONResponse(entry)
            raise ApiError(404, f"The model {model_id!r} does not exist.", code="model_not_found")

        return await guarded(work)

    @router.post("/chat/completions")
    async def chat_completions(request: Request) -> Any:
        async def work() -> Any:
            user = await anyio.to_thread.run_sync(api.authenticate, request)
            body = await _body(request, CompletionRequest)
            helper = api.is_helper(body)
            await api.admit(helper)
            handed_over = False
            try:
                call = await anyio.to_thread.run_sync(api.start, user, body, request.headers)
                if body.stream:
                    include = bool(body.stream_options and body.stream_options.include_usage)
                    handed_over = True  # the stream releases the slot when it ends
                    return StreamingResponse(
                        api.stream(call, include),
                        media_type="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                    )
                return JSONResponse(await anyio.to_thread.run_sync(api.complete, call))
            finally:
                if not handed_over:
                    api.release(helper)

        return await guarded(work)

    @router.post("/feedback")
    async def feedback(request: Request) -> Any:
        async def work() -> Any:
            user = await anyio.to_thread.run_sync(api.authenticate, request)
            body = await _body(request, FeedbackRequest)
            return JSONResponse(await anyio.to_thread.run_sync(api.feedback, user, body))

        return await guarded(work)

    return list(router.routes)
