"""OpenAPI entries of the Messages and Responses faces (mounted under /v1, which BentoML's spec leaves out).

Request bodies are the faces' own pydantic models (graph/entry/faces/anthropic_shapes.py, responses_shapes.py),
with the neutral values of the fields they refuse otherwise; replies are documented by the fields every
client reads (the `anthropic` and `openai` SDK types carry the rest). Errors are each API's own shape.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from graph.entry.faces import anthropic_shapes, responses_shapes
from graph.entry.faces.anthropic_shapes import CountTokensRequest, MessagesRequest
from graph.entry.faces.responses_shapes import ResponsesRequest

ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
MESSAGE = {
    "type": "object",
    "required": ["id", "type", "role", "content", "model", "stop_reason", "usage"],
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "message"},
        "role": {"const": "assistant"},
        "content": {"type": "array", "items": {"type": "object", "required": ["type"]}},
        "model": {"type": "string"},
        "stop_reason": {"enum": ["end_turn", "max_tokens", "tool_use"]},
        "stop_sequence": {"type": "null"},
        "usage": {
            "type": "object",
            "required": ["input_tokens", "output_tokens"],
            "properties": {"input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"}},
        },
    },
}
RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created_at", "model", "output", "status"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "response"},
        "created_at": {"type": "number"},
        "model": {"type": "string"},
        "output": {"type": "array", "items": {"type": "object", "required": ["type"]}},
        "status": {"enum": ["completed", "incomplete"]},
        "previous_response_id": {"type": ["string", "null"]},
    },
}
SSE = {  # stream=true: named server-sent events, each `event: <type>` and its JSON in `data`
    "text/event-stream": {
        "schema": {
            "type": "object",
            "required": ["data"],
            "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        }
    }
}


def _request(
    model: type[BaseModel], neutral: dict[str, tuple[Any, ...]], schemas: dict[str, Any], models: list[str]
) -> dict[str, Any]:
    """`model`'s JSON Schema (its definitions moved to components) with the config's models, plus each refused
    field's neutral values."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schema["properties"]["model"]["enum"] = models
    for name, values in neutral.items():
        schema.setdefault("properties", {})[name] = {"enum": list(values), "description": "Only its neutral values."}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _replies(ok: dict[str, Any], error: dict[str, Any], keys: bool, *, found: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": "The answer.", "content": ok}}
    statuses = {
        "400": "The request breaks a rule (the message names the field).",
        "404": "No such model, or no such stored response under this key.",
        "415": "The body is not JSON.",
        "429": "A node is overloaded, or the key is over its rate.",
        "500": "A node failed or timed out.",
        "503": "The response store's connections stayed busy; retry shortly.",
    }
    if keys:
        statuses["401"] = "No key, or not a valid key."
    if not found:
        statuses.pop("404")
    for status, description in sorted(statuses.items()):
        reply: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": error}}}
        if status in ("429", "503"):
            reply["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
        out[status] = reply
    return out


def agent_paths(schemas: dict[str, Any], *, keys: bool, models: list[str]) -> dict[str, Any]:
    """The /v1/messages and /v1/responses operations (their request models' definitions go into `schemas`);
    `models`: the generator nodes and named graphs (`graph:<name>`) a `model` field takes."""
    messages_neutral, responses_neutral = anthropic_shapes.NEUTRAL, responses_shapes.NEUTRAL
    message_ok = {"application/json": {"schema": MESSAGE}, **SSE}
    response_ok = {"application/json": {"schema": RESPONSE}, **SSE}
    response_id = [{"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "/v1/messages": {
            "post": {
                "summary": "Anthropic Messages API (docs/faces/anthropic.md); stream=true: Anthropic's events.",
                "requestBody": _request(MessagesRequest, messages_neutral, schemas, models),
                "responses": _replies(message_ok, ANTHROPIC_ERROR, keys),
            }
        },
        "/v1/messages/count_tokens": {
            "post": {
                "summary": "The prompt tokens a Messages request takes on its model's node.",
                "requestBody": _request(CountTokensRequest, messages_neutral, schemas, models),
                "responses": _replies(
                    {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["input_tokens"],
                                "properties": {"input_tokens": {"type": "integer"}},
                            }
                        }
                    },
                    ANTHROPIC_ERROR,
                    keys,
                ),
            }
        },
        "/v1/responses": {
            "post": {
                "summary": "OpenAI Responses API (docs/faces/openai.md); stream=true: the Responses events.",
                "requestBody": _request(ResponsesRequest, responses_neutral, schemas, models),
                "responses": _replies(response_ok, OPENAI_ERROR, keys),
            }
        },
        "/v1/responses/{response_id}": {
            "get": {
                "summary": "A stored response (only under the key that made it).",
                "parameters": response_id,
                "responses": _replies({"application/json": {"schema": RESPONSE}}, OPENAI_ERROR, keys),
            },
            "delete": {
                "summary": "Delete a stored response (only under the key that made it).",
                "parameters": response_id,
                "responses": _replies(
                    {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["id", "object", "deleted"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "object": {"const": "response"},
                                    "deleted": {"const": True},
                                },
                            }
                        }
                    },
                    OPENAI_ERROR,
                    keys,
                ),
            },
        },
    }
