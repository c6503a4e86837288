"""The OpenAI-compatible API's HTTP routes under `/v1`, handed to the chat page's web app.

Each route authenticates, reads its body within the size limit, and hands the work to
`OpenAIApi` (app/serving/api.py) on a worker thread; a client that disconnects cancels its
reply. Every failure answers in OpenAI's error shape and never with a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from app.serving.api import Call, OpenAIApi
from app.serving.api_feedback import give_feedback
from app.serving.api_models import (
    ApiError,
    CompletionRequest,
    FeedbackRequest,
    openapi_schema,
    read_body,
)

log = logging.getLogger(__name__)


async def until_gone(request: Request, call: Call) -> None:
    """Cancel the call's reply as soon as its client disconnects. The body is read by then,
    so the next message the server can get is the disconnect itself: waiting for it reacts
    at once, where polling `is_disconnected` could miss it until the reply had ended."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    call.gone = True
    call.reply.cancel()


async def complete_unless_gone(api: OpenAIApi, call: Call, request: Request) -> Any:
    """`api.complete(call)`, cancelled if the client leaves first; its error raised as is."""
    failure: Exception | None = None
    async with anyio.create_task_group() as watch:
        watch.start_soon(until_gone, request, call)
        try:
            done = await anyio.to_thread.run_sync(api.complete, call)
        except Exception as err:  # raised below: the group would wrap it in an ExceptionGroup
            failure = err
        watch.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return done


def api_routes(api: OpenAIApi) -> list[Any]:
    """The API's routes, to hand to the web app that serves the chat page."""
    router = APIRouter(prefix="/v1")

    async def guarded(work: Callable[[], Any]) -> Any:
        try:
            return await work()
        except ApiError as err:
            return err.response()
        except ClientDisconnect:  # closed while its body was read: nobody to answer
            log.info("request cancelled: the client went away before its body was read")
            return Response(status_code=499)
        except Exception:  # a bug must not leak a traceback to the client
            log.exception("API request failed")
            return ApiError(
                500, "Internal error; the server log says more.", type="server_error"
            ).response()

    @router.get("/openapi.json")
    async def openapi() -> Any:
        """What the API accepts, for client generators and API testers (no key needed:
        it describes the routes, it opens none of them)."""
        return JSONResponse(openapi_schema())

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
            body = await read_body(request, CompletionRequest, api.max_body_bytes)
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
                return JSONResponse(await complete_unless_gone(api, call, request))
            finally:
                if not handed_over:
                    api.release(helper)

        return await guarded(work)

    @router.post("/feedback")
    async def feedback(request: Request) -> Any:
        async def work() -> Any:
            user = await anyio.to_thread.run_sync(api.authenticate, request)
            body = await read_body(request, FeedbackRequest, api.max_body_bytes)
            done = await anyio.to_thread.run_sync(give_feedback, api.service, user, body)
            return JSONResponse(done)

        return await guarded(work)

    return list(router.routes)
