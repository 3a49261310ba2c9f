"""Structured output requests: `response_format` (OpenAI's shape), validated once and compiled to an
llguidance grammar that the engine's sampler enforces token by token (graph/engine/grammar.py).

    {"type": "json_object"}                                   any JSON object
    {"type": "json_schema", "json_schema": {"name": "...", "schema": {...}, "strict": true}}
    {"type": "text"}                                          no constraint (the neutral value)

A schema llguidance cannot compile is refused here, with the library's reason, before any node works.
`strict` is accepted either way: the output is always held to the schema (a completion cut by
max_new_tokens is the only way to get invalid JSON, and it says finish_reason "length").


Top level: part of the parameters both sides use (params.py); the node compiles its grammar."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

MAX_SCHEMA_CHARS = 64_000
# Compact JSON: no free whitespace between tokens, so a weak model cannot spend its budget on blanks.
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}
_ANY_OBJECT = {"type": "object"}


class JsonSchema(BaseModel):
    """OpenAI's `json_schema` member: a name, the schema, and `strict`."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True)

    name: str = Field(
        default="response", min_length=1, max_length=64, description="The schema's name (for the caller)."
    )
    description: str | None = Field(default=None, max_length=2000)
    schema_: dict[str, Any] = Field(
        default_factory=dict, alias="schema", description="A JSON Schema; the output is an instance of it."
    )
    strict: bool | None = Field(default=None, description="Accepted; the output always follows the schema here.")


class ResponseFormat(BaseModel):
    """What shape the completion must have: plain text, any JSON object, or a JSON Schema's instance."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["text", "json_object", "json_schema"] = Field(
        description="text = no constraint; json_object = any JSON object; json_schema = `json_schema.schema`."
    )
    json_schema: JsonSchema | None = Field(default=None, description="With type json_schema: the schema.")

    @model_validator(mode="after")
    def _compiles(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema: required with type json_schema")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"json_schema: only with type json_schema (type is {self.type})")
        if self.json_schema is not None and len(json.dumps(self.json_schema.schema_)) > MAX_SCHEMA_CHARS:
            raise ValueError(f"json_schema.schema: above {MAX_SCHEMA_CHARS} characters")
        problem = grammar_error(self.grammar())
        if problem:
            raise ValueError(f"json_schema.schema: llguidance cannot compile it: {problem}")
        return self

    def constrained(self) -> bool:
        return self.type != "text"

    def grammar(self) -> str | None:
        """The llguidance grammar of this format (None for text)."""
        if self.type == "text":
            return None
        from llguidance import LLMatcher

        schema = self.json_schema.schema_ if self.json_schema is not None else _ANY_OBJECT
        try:
            return LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
        except ValueError as exc:
            raise ValueError(f"json_schema.schema: not a JSON object ({exc})") from None


def grammar_error(grammar: str | None) -> str:
    """llguidance's reason a grammar does not compile ('' when it does)."""
    if grammar is None:
        return ""
    from llguidance import LLMatcher

    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    return messages[0] if is_error else ""
