"""One error taxonomy for the graph; the services turn each kind into an HTTP status in one place."""

from __future__ import annotations


class GraphError(Exception):
    """Base of every error the graph raises on purpose. `status` is the HTTP status it maps to."""

    status = 500
    kind = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.kind, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidRequest(GraphError):
    """The request breaks a rule (bad value, unknown field, unknown model). 400."""

    status = 400
    kind = "validation"


class Overloaded(GraphError):
    """A node's queue is full. 429 with Retry-After (our own errors stay at or below 500: STYLE.md)."""

    status = 429
    kind = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def to_dict(self) -> dict[str, object]:
        # In the body too: a node's 429 crosses to the entry service as a payload, not its headers.
        return {**super().to_dict(), "retry_after_s": self.retry_after_s}


class NodeFailure(GraphError):
    """A node failed while doing its work (not the caller's fault). 500."""

    status = 500
    kind = "node_failure"

    def __init__(self, message: str, *, node: str) -> None:
        super().__init__(message)
        self.node = node

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "node": self.node}


class NodeTimeout(NodeFailure):
    """A node did not answer within the graph's deadline (graph_timeout_s). 500, kind node_timeout."""

    status = 500
    kind = "node_timeout"


class ConfigError(GraphError):
    """A graph config file is wrong; raised at startup, names the key."""

    kind = "config"
