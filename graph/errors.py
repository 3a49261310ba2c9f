"""One error taxonomy for the graph, and the typed payload an error travels as (node -> entry -> face).

`graph/` raises these; each face turns them into its protocol in one place (HTTP JSON:
services/common.py `error_response`). A node's error crosses to the entry as an `ErrorBody` and is
rebuilt with `error_from_body`, so the entry raises the same kind the node raised.


Top level: both sides raise these; a node's error crosses to the entry as its typed payload."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    """The JSON body of every error the graph answers with."""

    model_config = ConfigDict(extra="ignore")

    error: str = Field(
        description="Kind: validation, overloaded, node_failure, node_timeout, ...", examples=["validation"]
    )
    message: str = Field(
        description="What went wrong, naming the field and the rule.",
        examples=["params.temperature: Input should be less than or equal to 5"],
    )
    field: str | None = Field(default=None, description="The request field at fault, when there is one.")
    node: str | None = Field(default=None, description="The node that failed, for node errors.")
    retry_after_s: int | None = Field(default=None, description="For overloaded: seconds to wait before retrying.")


class GraphError(Exception):
    """Base of every error the graph raises on purpose. `status` is the HTTP status it maps to."""

    status = 500
    kind = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> ErrorBody:
        return ErrorBody(error=self.kind, message=self.message, field=self.field)

    def to_dict(self) -> dict[str, object]:
        return self.body().model_dump(exclude_none=True)


class InvalidRequest(GraphError):
    """The request breaks a rule (bad value, unknown field, unknown model). 400."""

    status = 400
    kind = "validation"


class Overloaded(GraphError):
    """A node's queue is full, or its expected wait is too long: 429 with Retry-After.

    Our own errors stay at or below 500 (STYLE.md).
    """

    status = 429
    kind = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def body(self) -> ErrorBody:
        return super().body().model_copy(update={"retry_after_s": self.retry_after_s})


class Unavailable(Overloaded):
    """A shared resource of the entry (the chat database's connection pool) stayed busy past its timeout.
    503 with Retry-After, as issue #20 asks: a moment's shortage, not a server fault."""

    status = 503
    kind = "unavailable"


class NodeFailure(GraphError):
    """A node failed while doing its work (not the caller's fault). 500."""

    status = 500
    kind = "node_failure"

    def __init__(self, message: str, *, node: str) -> None:
        super().__init__(message)
        self.node = node

    def body(self) -> ErrorBody:
        return super().body().model_copy(update={"node": self.node})


class NodeUnavailable(NodeFailure):
    """A node cannot be reached (its process or pod is down or restarting). 503, kind node_unavailable:
    the issue asks for 503 here, so a caller or load balancer retries elsewhere or later."""

    status = 503
    kind = "node_unavailable"


class NodeTimeout(NodeFailure):
    """A node did not answer within the graph's deadline (graph_timeout_s). 500, kind node_timeout."""

    kind = "node_timeout"


class Refused(GraphError):
    """A named graph's guard found the prompt or the answer over a blocked label's threshold. 422, kind refused:
    the request was understood and will not be answered as it stands (`field`: prompt or output)."""

    status = 422
    kind = "refused"


class ConfigError(GraphError):
    """A graph config file is wrong; raised at startup, names the key."""

    kind = "config"


def error_from_body(body: ErrorBody, node: str) -> GraphError:
    """The error a node answered with, raised again at the entry: the caller's faults stay the
    caller's (naming the node), everything else is that node's failure."""
    if body.error == InvalidRequest.kind:
        return InvalidRequest(f"node {node!r} rejected the request: {body.message}", field=body.field)
    if body.error == Overloaded.kind:
        return Overloaded(f"node {node!r} is overloaded: {body.message}", retry_after_s=body.retry_after_s or 1)
    if body.error == NodeTimeout.kind:
        return NodeTimeout(f"node {node!r} timed out: {body.message}", node=node)
    return NodeFailure(f"node {node!r} failed: {body.message}", node=node)


def error_from_status(status: int, message: str, node: str) -> GraphError:
    """A node call that failed without an ErrorBody (BentoML's own refusal, a dead worker)."""
    if status in (429, 503):  # BentoML's max_concurrency refusal, or a node not ready
        return Overloaded(f"node {node!r} is overloaded: {message}")
    return NodeFailure(f"node {node!r} failed ({status}): {message}", node=node)


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The error to report from a failed TaskGroup: a GraphError if there is one."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        err = stack.pop()
        if isinstance(err, BaseExceptionGroup):
            stack.extend(reversed(err.exceptions))
        else:
            leaves.append(err)
    return next((e for e in leaves if isinstance(e, GraphError)), leaves[0])
