"""The entry's OpenAPI spec made exact: every status and body the server sends, and SSE as SSE.

BentoML documents each API with its own error schemas (400/404/500) and a text/plain stream; this
rewrites its spec (served at /docs.json and behind the Swagger UI at /) to what the edge and the
error boundary really answer: ErrorBody for 400, 401 (keys on), 415, 429 (+ Retry-After) and 500,
text/event-stream for streams, 200/503 for /readyz.
"""

from __future__ import annotations

import copy
from typing import Any

from graph.errors import ErrorBody
from graph.params import GenerationParams
from services.agent_openapi import agent_paths

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
SSE_DESCRIPTION = (
    "Server-sent events: one `data: <JSON event>` line per event (`type`: token, final, score or "
    "error; a named graph's stream also candidates, prune, gate and decision; see the event schemas), "
    "then `data: [DONE]`."
)
ERRORS = {
    "400": "The request breaks a rule: `field` names it (unknown field, bad value, unknown model, budget).",
    "415": "The body is not JSON (send Content-Type: application/json).",
    "429": "A node is overloaded, or the key is over its rate: retry after `Retry-After` seconds.",
    "500": "A node failed (`node` names it) or did not answer within graph_timeout_s (node_timeout).",
}
STREAM_SCHEMAS = ("TokenEvent", "FinalEvent", "ScoreEvent", "ErrorEvent")
# a named graph's stream
POLICY_EVENT_SCHEMAS = ("CandidatesEvent", "PruneEvent", "GateEvent", "StepEvent", "DecisionEvent")
SSE_EVENT = {  # one server-sent event as clients parse it
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "A JSON event (TokenEvent, FinalEvent, ScoreEvent or ErrorEvent), or [DONE] last.",
        },
        "event": {"type": "string"},
    },
}


def exact_spec(
    spec: dict[str, Any],
    *,
    keys: bool,
    models: list[str],
    max_new_tokens: int,
    max_chars: int,
    defaults: list[GenerationParams],
    graphs: tuple[str, ...] = ("all",),
    sampling: tuple[str, ...] = (),
    default_graph: str = "all",
) -> dict[str, Any]:
    """`spec` (BentoML's) with the responses the server really sends, and the config's own limits:
    `keys`: API keys are on; `models`: the generator nodes a `model` field accepts;
    `max_new_tokens`: the lowest node limit; `max_chars`: the prompt limit (prompt.max_chars);
    `defaults`: the nodes' default params (the cross-field rules apply to defaults + overrides);
    `graphs`: the named graphs a `graph` field accepts (config `policies`), `sampling` those that sample several
    candidates on a node, `default_graph` the one a request without `graph` gets."""
    out = copy.deepcopy(spec)
    out["openapi"] = "3.1.0"  # the schemas are JSON Schema 2020-12 (pydantic's): null types, numeric exclusive bounds
    schemas = out.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema()
    _add_event_schemas(schemas)
    for path, methods in out.get("paths", {}).items():
        for op in methods.values():
            if "x-bentoml-name" in op:
                _api(op, keys=keys)
                _body(op, models, max_chars)
                for reply in op.get("responses", {}).values():  # inline reply schemas (e.g. /chat's)
                    _nullable(
                        reply.get("content", {}).get("application/json", {}).get("schema", {}).get("properties", {})
                    )
                _enum(op, "graph", list(graphs), "Named graph of the config; omit for the config's default.")
                if op["x-bentoml-name"] == "generate_score":
                    _list_or_decision(op, schemas)
                _graph_rules(op, [g for g in graphs if g != "all"], list(sampling), default_graph)
                if op["x-bentoml-name"] in ONE_REPLY:
                    _one_reply(op)
            elif path == "/readyz":
                op["responses"] = {
                    "200": {
                        "description": "Every node is ready.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "503": {
                        "description": "A node is not ready (`nodes` says which).",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                }
    named = [f"graph:{g}" for g in graphs if g != "all"]
    out["paths"].update(agent_paths(schemas, keys=keys, models=[*models, *named]))  # Messages and Responses (/v1)
    for schema in schemas.values():  # replies too: a field that defaults to None may be null
        _nullable(schema.get("properties", {}))
    overrides = schemas.get("GenerationOverrides", {})
    for option in overrides.get("properties", {}).get("max_new_tokens", {}).get("anyOf", []):
        if option.get("type") == "integer":
            option["maximum"] = max_new_tokens
    if overrides:
        overrides["allOf"] = cross_field_rules(defaults)
    for unused in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(unused, None)
    return out


def _api(op: dict[str, Any], *, keys: bool) -> None:
    responses = op["responses"]
    ok = responses.get("200", {})
    if "text/plain" in ok.get("content", {}) and op["x-bentoml-name"].endswith("_stream"):
        ok["content"] = {"text/event-stream": {"schema": SSE_EVENT}}
        ok["description"] = SSE_DESCRIPTION
    errors = dict(ERRORS)
    if keys:
        errors["401"] = "No `Authorization: Bearer <key>` header, or not a valid key."
    op["responses"] = {"200": ok}
    for status, description in sorted(errors.items()):
        response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}
        if status == "429":
            response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
        op["responses"][status] = response
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if op.get("requestBody"):  # a body is required when its schema requires something; {} is valid otherwise
        op["requestBody"]["required"] = bool(body.get("required") or body.get("oneOf"))


ONE_REPLY = ("infer", "chat_turn", "chat_stream")  # chat turns (/chat is chat_turn): one reply, num_return_sequences 1


def _one_reply(op: dict[str, Any]) -> None:
    params = op["requestBody"]["content"]["application/json"]["schema"]["properties"].get("params", {})
    one = {"properties": {"num_return_sequences": {"anyOf": [{"const": 1}, {"type": "null"}]}}}
    for i, option in enumerate(params.get("anyOf", [])):
        if "$ref" in option:
            params["anyOf"][i] = {"allOf": [option, one]}


def _nullable(props: dict[str, Any]) -> None:
    """Optional fields (default None) whose null BentoML dropped get it back."""
    for name, prop in props.items():
        if isinstance(prop, dict) and prop.get("default", "") is None and "anyOf" not in prop and "type" in prop:
            keep = {k: prop.pop(k) for k in ("default", "description", "title", "examples") if k in prop}
            props[name] = {"anyOf": [dict(prop), {"type": "null"}], **keep}


def _body(op: dict[str, Any], models: list[str], max_chars: int) -> None:
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    props = body.get("properties", {})
    for name, prop in props.items():
        if prop.get("default", "") is None and "anyOf" not in prop:  # BentoML drops the null of Optional fields
            keep = {k: prop.pop(k) for k in ("default", "description", "title", "examples") if k in prop}
            props[name] = {"anyOf": [dict(prop), {"type": "null"}], **keep}
        for option in [props[name], *props[name].get("anyOf", [])]:  # prompts: prompt.max_chars
            if name in ("prompt", "original_sentence") and option.get("type") == "string":
                option["maxLength"] = max_chars
            if name == "prompts" and option.get("type") == "array":
                option["items"]["maxLength"] = max_chars
    if "model" in props:
        prop = body["properties"]["model"]
        body["properties"]["model"] = {
            "anyOf": [{"type": "string", "enum": list(models)}, {"type": "null"}],
            "default": None,
            "description": prop.get("description", "Generator node name; omit for every node."),
        }


def _enum(op: dict[str, Any], field: str, values: list[str], description: str) -> None:
    """An optional string field of the body that takes one of `values` (null: the default)."""
    props = (
        op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}).get("properties", {})
    )
    if field in props:
        props[field] = {
            "anyOf": [{"type": "string", "enum": values}, {"type": "null"}],
            "default": None,
            "description": props[field].get("description", description),
        }


def _graph_rules(op: dict[str, Any], named: list[str], sampling: list[str], default: str) -> None:
    """The rules of a named graph (graph/entry/policies/run.py): it sets its candidates (num_return_sequences 1),
    chooses its nodes (no `model`), and one that samples several candidates on a node cannot be made greedy."""
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if "graph" not in body.get("properties", {}):
        return

    def chosen(names: list[str]) -> dict[str, Any]:
        given = {"properties": {"graph": {"enum": names}}, "required": ["graph"]}
        if default not in names:
            return given
        return {"anyOf": [given, {"not": {"required": ["graph"]}}, {"properties": {"graph": {"type": "null"}}}]}

    def params(rule: dict[str, Any]) -> dict[str, Any]:
        return {"properties": {"params": {"anyOf": [{"type": "null"}, {"properties": rule}]}}}

    rules = []
    if named:
        then = params({"num_return_sequences": {"anyOf": [{"const": 1}, {"type": "null"}]}})
        if "model" in body["properties"]:
            then["properties"]["model"] = {"type": "null"}
        rules.append({"if": chosen(named), "then": then})
    if sampling:
        rules.append(
            {
                "if": chosen(sampling),
                "then": params(
                    {
                        "do_sample": {"anyOf": [{"const": True}, {"type": "null"}]},
                        "temperature": {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}]},
                    }
                ),
            }
        )
    if rules:
        body["allOf"] = [*body.get("allOf", []), *rules]


def _list_or_decision(op: dict[str, Any], schemas: dict[str, Any]) -> None:
    """/generate_score answers graph `all`'s list or a named graph's PolicyResponse.

    BentoML documents the list only.
    """
    from graph.entry.policies.schemas import PolicyResponse

    schema = PolicyResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas["PolicyResponse"] = schema
    content = op["responses"]["200"].setdefault("content", {}).setdefault("application/json", {})
    listed = content.get("schema", {"type": "array"})
    content["schema"] = {"anyOf": [listed, {"$ref": "#/components/schemas/PolicyResponse"}]}


def _add_event_schemas(schemas: dict[str, Any]) -> None:
    from graph.entry import schemas as api
    from graph.entry.policies import schemas as policy_events

    for name in (*STREAM_SCHEMAS, *POLICY_EVENT_SCHEMAS):
        model = getattr(api, name, None) or getattr(policy_events, name)
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema


def _given(field: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"properties": {field: schema}, "required": [field]}


def cross_field_rules(defaults: list[GenerationParams]) -> list[dict[str, Any]]:
    """GenerationParams' cross-field rules as JSON Schema over the overrides, for nodes with these
    defaults (a rule on a field the request leaves out is decided by the nodes' defaults)."""
    always = {"not": {}}  # a schema nothing satisfies
    rules = []
    # top_logprobs needs logprobs=true
    if not all(d.logprobs for d in defaults):
        rules.append(
            {
                "if": _given("top_logprobs", {"type": "integer", "minimum": 1}),
                "then": _given("logprobs", {"const": True}),
            }
        )
    else:
        rules.append(
            {
                "if": _given("top_logprobs", {"type": "integer", "minimum": 1}),
                "then": {"not": _given("logprobs", {"const": False})},
            }
        )
    # num_return_sequences > 1 needs do_sample=true
    sampled_by_default = all(d.do_sample for d in defaults)
    rules.append(
        {
            "if": _given("num_return_sequences", {"type": "integer", "minimum": 2}),
            "then": {"not": _given("do_sample", {"const": False})}
            if sampled_by_default
            else _given("do_sample", {"const": True}),
        }
    )
    # temperature 0 with do_sample=true is undefined
    rules.append({"if": _given("do_sample", {"const": True}), "then": {"not": _given("temperature", {"const": 0})}})
    if any(d.do_sample for d in defaults):
        rules.append({"if": _given("temperature", {"const": 0}), "then": _given("do_sample", {"const": False})})
    # a node default the request keeps must not break a rule either
    if any(d.do_sample and d.temperature == 0 for d in defaults):
        rules.append(always)
    return rules
