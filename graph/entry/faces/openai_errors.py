"""The OpenAI face's one error mapping: a GraphError (or a stream's ErrorEvent) -> OpenAI's error object.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": "validation"}}

The HTTP status stays the graph's (400 bad input, 404 unknown model, 429 overloaded with Retry-After,
500 node failure or timeout), which is what the `openai` SDK turns into BadRequestError, NotFoundError,
RateLimitError and InternalServerError. The graph's own names (params.max_new_tokens, prompt) become
the request's OpenAI names (max_tokens, messages) in `param` and in the message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from openai.types.shared import ErrorObject
from pydantic import BaseModel

from graph.errors import ErrorBody, GraphError, InvalidRequest, Overloaded

# OpenAI's error `type` for each of the graph's error kinds; anything else is the server's fault.
_TYPES = {
    "validation": "invalid_request_error",
    "model_not_found": "invalid_request_error",
    "not_found": "invalid_request_error",
    "unauthorized": "authentication_error",
    "overloaded": "rate_limit_error",
    "rate_limited": "rate_limit_error",
    "unsupported_media_type": "invalid_request_error",
    "refused": "invalid_request_error",  # a named graph's guard: OpenAI's content refusals are 400-class too
}
_GRAPH_NAME = re.compile(r"\b(?:params\.)?([a-z_]+)(?=[:.\[]|$)")


class UnknownModel(InvalidRequest):
    """The request's `model` is neither a generator node nor a graph. 404, as OpenAI answers."""

    status = 404
    kind = "model_not_found"


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorObject


@dataclass(frozen=True)
class OpenAIError:
    """What an error becomes on this face: status, body and headers."""

    status: int
    body: ErrorResponse
    headers: dict[str, str] = field(default_factory=dict)


def rename(text: str, names: Mapping[str, str]) -> str:
    """The graph's field names in `text` (params.max_new_tokens, prompt, prompts[1]) as the request's."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        return names.get(name, name)

    return _GRAPH_NAME.sub(one, text)


def error_object(body: ErrorBody, names: Mapping[str, str]) -> ErrorResponse:
    """The graph's ErrorBody as OpenAI's error object, in the request's names."""
    message = rename(body.message, names)
    if body.node and f"{body.node!r}" not in message:
        message = f"node {body.node!r}: {message}"
    return ErrorResponse(
        error=ErrorObject(
            message=message,
            type=_TYPES.get(body.error, "server_error"),
            param=rename(body.field, names) if body.field else None,
            code=body.error,
        )
    )


def openai_error(err: GraphError, names: Mapping[str, str] | None = None) -> OpenAIError:
    """The one place a GraphError becomes this face's answer."""
    headers = {"Retry-After": str(err.retry_after_s)} if isinstance(err, Overloaded) else {}
    return OpenAIError(err.status, error_object(err.body(), names or {}), headers)
