"""`POST /v1/feedback`: a rating, a correction or a pick on the caller's own completions.

The same ChatService calls as the page's buttons; a completion is found by the id the API
returned for it, and only its owner may judge it.
"""

from __future__ import annotations

from typing import Any

from app.serving.api_models import ApiError, FeedbackRequest
from app.serving.chat import ChatService
from app.serving.conversation import ChatError
from feedback.errors import FeedbackError
from feedback.records import UserInfo


def _owned(service: ChatService, user: UserInfo, completion_id: str) -> int:
    try:
        info = service.store.owned_completion(completion_id=completion_id, user_id=user.id)
    except FeedbackError as err:
        raise ApiError(404, str(err), code="completion_not_found") from err
    return int(info.id)


def give_feedback(service: ChatService, user: UserInfo, body: FeedbackRequest) -> dict[str, Any]:
    """Take one piece of feedback; a 400/404 ApiError when it cannot be taken."""
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
            first, second = (_owned(service, user, i) for i in body.completion_ids)
            choice = {"first": "A", "second": "B", "tie": "tie"}[body.choice]
            message = service.pick_between(user, first, second, choice)
            return {"object": "feedback", "kind": kind, "message": message}
        if body.completion_id is None:
            raise ApiError(400, f"A {kind} needs completion_id.", param="completion_id")
        response_id = _owned(service, user, body.completion_id)
        if kind == "rating":
            message = service.rate_response(
                user, response_id, up=body.rating == 1, reason=body.reason
            )
        else:
            message = service.correct_response(user, response_id, body.correction or "")
    except (ChatError, FeedbackError) as err:
        raise ApiError(400, str(err)) from err
    return {
        "object": "feedback",
        "kind": kind,
        "completion_id": body.completion_id,
        "message": message,
    }
