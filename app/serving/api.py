"""The OpenAI-compatible HTTP API: `/v1/models`, `/v1/chat/completions`, `/v1/feedback`.

Served by `tuneloop serve` on the chat app's own server and port (its routes are handed to
Gradio's FastAPI app before it starts), so a team points Open WebUI, LibreChat or its own
scripts at `http://HOST:PORT/v1` and there is one address, one process and one model in
memory. Every completion goes through the same `ChatService` calls as the page (a new
conversation of the key's owner, the reply stored with the version that wrote it), and
`/v1/feedback` through the same rating, correction and pick calls as the page's buttons.

Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the
status codes OpenAI clients expect; nothing here ever answers with a traceback. What a
request may hold, and the checks made before anything is stored or decoded, are in
`app/serving/api_models.py`. A client that goes away (streamed or not) cancels its reply and
frees its slot at once.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import Request

from app.serving import frontends
from app.serving.admission import Slots
from app.serving.api_models import (
    ApiError,
    CompletionRequest,
    check_sizes,
)
from app.serving.chat import ChatService
from app.serving.conversation import CHAT_ROLES, ChatError, ChatState, Turn
from app.serving.engine import CURRENT, ContextTooLong, Reply, SamplingParams, ServingError
from app.serving.helper_answers import quick_answer
from app.serving.replies import answered_reply
from feedback.errors import FeedbackError
from feedback.records import UserInfo

log = logging.getLogger(__name__)

SERVING_MODEL = "tuneloop"  # whatever CURRENT names when the request arrives
BASE_MODEL = "tuneloop:base"  # the bare base model, no adapter
COMPLETION_PREFIX = "chatcmpl-"


# -- the API ---------------------------------------------------------------------------------
@dataclass
class Call:
    """A completion being answered: who asked, for what, and the reply underway."""

    user: UserInfo
    model: str
    state: ChatState
    reply: Reply
    completion_id: str
    created: int
    helper: bool = False  # a front end's helper call: answered, never stored
    candidate_in: int | None = None  # a regenerated turn: stored beside this conversation
    gone: bool = False  # the client disconnected: the reply was cancelled, nothing stored


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
        quick_helpers: bool = False,
        wait_seconds: float = 0.0,
        max_body_bytes: int = 1_048_576,
    ) -> None:
        self.service = service
        self.versions = versions
        self.max_active = max_active
        self.slots = Slots(max_active, wait_seconds=wait_seconds)
        self.frontends = frontends.Frontends(service.store, trusted=trusted_frontends)
        self.helper_max_tokens = helper_max_tokens
        self.quick_helpers = quick_helpers  # app/serving/helper_answers.py
        self.max_body_bytes = max_body_bytes

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
            "serving": self.serving(),
        }

    def serving(self) -> dict[str, Any]:
        """How serving is holding up: requests answered now, and restarts of the decoding
        loop with the last fault (what `tuneloop status` reads from HOME/serving.json)."""
        people, helpers = self.slots.in_use()
        return {
            "active": people,
            "max_active": self.max_active,
            "helper_calls": helpers,
            **self.service.engine.health(),
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
        temperature = default.temperature if body.temperature is None else body.temperature
        top_p = default.top_p if body.top_p is None else body.top_p
        if top_p == 0:  # no probability mass kept but the top token's: greedy
            temperature, top_p = 0.0, default.top_p
        return SamplingParams(
            max_new_tokens=body.max_completion_tokens or body.max_tokens or default.max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=tuple(stop),
            seed=body.seed,
        )

    def is_helper(self, body: CompletionRequest) -> bool:
        """Whether the request is a front end's helper call (`app.serving.frontends`)."""
        texts = [(m.role, m.content if isinstance(m.content, str) else "") for m in body.messages]
        return frontends.is_helper(model=body.model, store=body.store, texts=texts)

    def start(self, user: UserInfo, body: CompletionRequest, headers: Any = None) -> Call:
        """Validate, then commit the user's message and start the reply (a worker thread).

        A helper call is only answered; a trusted front end's request is its end user's,
        in its chat's conversation (`app.serving.frontends`).
        """
        adapter = self._adapter(body.model)
        params = self._params(body)
        texts = check_sizes(body, self.service.max_message_chars)
        turns: list[Turn] = []
        for m, text in zip(body.messages, texts, strict=True):
            role = "system" if m.role == "developer" else m.role
            turns.append(Turn(role, text))
        if turns[-1].role != "user":
            raise ApiError(400, "The last message must be the user's.", param="messages")
        helper = self.is_helper(body)
        if helper:
            wants_json = frontends.asks_for_json([(t.role, t.content) for t in turns])
            params = frontends.helper_params(params, self.helper_max_tokens, json=wants_json)
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
                quick = quick_answer(turns[-1].content) if self.quick_helpers else None
                if quick is not None:  # a routine task of the front end's: no decoding
                    reply = answered_reply(
                        quick, params=params, prompt=history, model_name=engine.model_name
                    )
                else:
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
        return Call(
            user=user,
            model=body.model,
            state=state,
            reply=reply,
            completion_id=COMPLETION_PREFIX + uuid.uuid4().hex,
            created=int(time.time()),
            helper=helper,
            candidate_in=candidate_in,
        )

    def finish(self, call: Call) -> dict[str, Any]:
        """Store the finished reply as the user's turn; returns the usage and finish reason."""
        info = call.reply.info
        assert info is not None
        if call.candidate_in is not None:
            self.service.record_candidate(call.candidate_in, info, call.completion_id)
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

    def complete(self, call: Call) -> dict[str, Any]:
        """The whole reply at once (blocking)."""
        try:
            for _ in call.reply:
                pass
        except ServingError as err:
            raise ApiError(500, f"The model failed: {err}", type="server_error") from err
        if call.gone:  # nobody to answer: keep no half reply
            log.info("completion %s cancelled: the client went away", call.completion_id)
            return {}
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

    async def stream(self, call: Call, include_usage: bool) -> AsyncIterator[str]:
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
                # abandon_on_cancel: a client gone mid-reply ends this at once (the finally
                # below cancels the reply) instead of after the next piece
                piece = await anyio.to_thread.run_sync(next, pieces, None, abandon_on_cancel=True)
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
            if not call.reply.done.is_set():
                log.info("completion %s cancelled: the client went away", call.completion_id)
            call.reply.cancel()  # the client went away mid-reply: stop generating
            self.release(call.helper)
        yield "data: [DONE]\n\n"

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
