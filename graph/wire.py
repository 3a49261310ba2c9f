"""The one codec of the node boundary: a node's stream crosses BentoML as raw text chunks, so each
item travels as one JSON line (a `StreamEvent`, or the node's `ErrorBody`), and `StreamDecoder`
turns chunks back into typed events at the entry, raising the node's error as a GraphError.

Top level: the codec of the node boundary: the node encodes with it, the entry decodes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from graph.errors import ErrorBody, GraphError, NodeFailure, error_from_body
from graph.results import StreamEvent


class WireItem(BaseModel):
    """One line of a node's stream: exactly one of `event`, `error` or `admitted` (the node's scheduler
    accepted the request: sent first, before any event, so the entry can answer a refusal with a status)."""

    model_config = ConfigDict(extra="forbid")

    event: StreamEvent | None = None
    error: ErrorBody | None = None
    admitted: bool | None = None


ADMITTED_LINE = WireItem(admitted=True).model_dump_json(exclude_none=True) + "\n"


def encode_event(event: StreamEvent) -> str:
    return WireItem(event=event).model_dump_json(exclude_none=True) + "\n"


def encode_error(err: GraphError) -> str:
    return WireItem(error=err.body()).model_dump_json(exclude_none=True) + "\n"


class StreamDecoder:
    """Chunks of node `node`'s stream -> its StreamEvents, in order (chunks may split lines)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.admitted = False  # the node's admission line has arrived
        self._buffer = ""

    def feed(self, chunk: str | bytes) -> list[StreamEvent]:
        """The events completed by `chunk`; raises the node's error when a line carries one."""
        self._buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        *lines, self._buffer = self._buffer.split("\n")
        return [event for line in lines if line.strip() for event in [self._item(line)] if event is not None]

    def close(self) -> None:
        """The stream ended: anything left is a cut-off line."""
        if self._buffer.strip():
            raise NodeFailure(f"node {self.node!r} stream ended inside an event", node=self.node)

    def _item(self, line: str) -> StreamEvent | None:
        try:
            item = WireItem.model_validate_json(line)
        except ValidationError as exc:  # a server bug, not bad input: never a 400
            raise NodeFailure(f"node {self.node!r} sent an unreadable stream line: {exc}", node=self.node) from None
        if item.error is not None:
            raise error_from_body(item.error, self.node)
        if item.admitted:
            self.admitted = True
            return None
        if item.event is None:
            raise NodeFailure(f"node {self.node!r} sent an empty stream line", node=self.node)
        return item.event
