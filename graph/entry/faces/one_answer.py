"""The models the Messages and Responses faces answer with: one answer per request.

Those APIs carry one assistant message, so a `model` there is a generator node or a named graph
(`graph:<name>`, its decided answer); `graph` (one scored completion per node) is refused, naming the others.
"""

from __future__ import annotations

from graph.entry.faces.openai_face import GRAPH_MODEL, OpenAIFace
from graph.errors import InvalidRequest


def one_answer_models(face: OpenAIFace) -> list[str]:
    return [m for m in face.routes if m != GRAPH_MODEL]


def check_one_answer(face: OpenAIFace, model: str) -> None:
    """404 for a model that does not exist; 400 for `graph`."""
    face.route(model)
    if model == GRAPH_MODEL:
        raise InvalidRequest(
            f"model: {GRAPH_MODEL!r} answers with one scored completion per node, which this API cannot carry; "
            f"ask a node or a named graph ({', '.join(one_answer_models(face))})",
            field="model",
        )
