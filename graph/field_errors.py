"""pydantic's validation errors as (field, rule) pairs and one "field: rule; ..." message, for every edge.

The config loader, the training config, GenerationParams, the OpenAI and gRPC faces and the HTTP
edge all name a bad field the same way: its dotted path (or the face's own path syntax), then
pydantic's message without its "Value error, " prefix. A cross-field rule (a model validator, no
location) names its field first ("temperature: ..."), so that name becomes the field.


Top level: the config, the parameters and the entry's faces word their validation errors with it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

FieldError = tuple[str, str]  # (field path, what is wrong with it)


def dotted(loc: Sequence[Any]) -> str:
    """pydantic's error location as a dotted path: params.stop.0."""
    return ".".join(str(p) for p in loc)


def field_errors(
    errors: Iterable[Mapping[str, Any]],
    *,
    prefix: str = "",
    unknown: str | None = None,
    path: Callable[[tuple[Any, ...]], str] = dotted,
) -> list[FieldError]:
    """Each error of `ValidationError.errors()` (or the same dicts from a JSON body) as (field, rule).

    `prefix` goes in front of every field (params.max_new_tokens); `unknown` replaces pydantic's
    message for a key the model does not have; `path` turns a location into the caller's syntax."""
    out: list[FieldError] = []
    for err in errors:
        loc = path(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if unknown is not None and err.get("type") == "extra_forbidden":
            msg = unknown
        if not loc and ": " in msg:  # a cross-field rule names its field first
            loc, msg = msg.split(": ", 1)
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        out.append((loc, msg))
    return out


def describe(errors: Iterable[FieldError], *, sep: str = "; ", root: str | None = None) -> str:
    """The pairs as one message, "field: rule" joined by `sep` (duplicates once); a pair without a
    field reads `root: rule`, or the rule alone when `root` is None."""
    parts = [f"{field or root}: {msg}" if (field or root) else msg for field, msg in errors]
    return sep.join(dict.fromkeys(parts))
