"""The request context: who calls, the request id, the deadline and the token account, made once at a face's edge.

Every face (HTTP JSON, OpenAI, chat, both gRPC services) builds one `RequestContext` where a request
arrives and hands it to the graph (graph/entry/compose.py `Graph`); the graph, not the face, charges every
token a generator produces for it to the caller's key, gives up at its deadline and decides retries.
`new_request_id` is the one maker of request ids; `request_id_from` keeps a caller's own id when it
is a sane one.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Protocol

from graph.entry.auth import Caller

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def new_request_id() -> str:
    """A fresh request id (16 hex characters): it follows the request across nodes in the logs."""
    return uuid.uuid4().hex[:16]


def request_id_from(given: str | None) -> str:
    """The caller's own request id when it is one (letters, digits, `._:@/+=-`, at most 128 characters:
    it goes back in a header and into logs), else a new one."""
    if given and _SANE_ID.fullmatch(given):
        return given
    return new_request_id()


class Meter(Protocol):
    """Where generated tokens are charged (graph/entry/auth.py ApiKeys has `charge`)."""

    def charge(self, caller: Caller, tokens: int) -> None: ...


@dataclass
class Account:
    """The tokens one request has generated (every candidate, pruned ones included), charged as they come."""

    caller: Caller = field(default_factory=Caller)
    meter: Meter | None = None
    tokens: int = 0

    def charge(self, tokens: int) -> None:
        if tokens <= 0:
            return
        self.tokens += tokens
        if self.meter is not None:
            self.meter.charge(self.caller, tokens)


@dataclass(frozen=True)
class RequestContext:
    """One request as the graph sees it. `expires` is the monotonic time the graph gives up at (the
    config's graph_timeout_s, or sooner when the caller gave a shorter deadline); `deadline_ms` is the
    answer-in-time budget a request asked for (the deadline splitter in graph/entry/policies/deadline.py)."""

    request_id: str
    expires: float
    account: Account = field(default_factory=Account)
    deadline_ms: int | None = None
    priority: int = 0
    user: str | None = None  # the request's own `user` (OpenAI's field): a split keeps one user on one branch
    metadata: tuple[tuple[str, str], ...] = ()  # the request's metadata (a switch may route on it)

    @classmethod
    def make(
        cls,
        *,
        timeout_s: float,
        request_id: str | None = None,
        caller: Caller | None = None,
        meter: Meter | None = None,
        deadline_ms: int | None = None,
    ) -> RequestContext:
        """The context of a request arriving now (`request_id`: one the face already chose, else a new one)."""
        return cls(
            request_id=request_id or new_request_id(),
            expires=time.monotonic() + timeout_s,
            account=Account(caller=caller or Caller(), meter=meter),
            deadline_ms=deadline_ms,
        )

    @property
    def caller(self) -> Caller:
        return self.account.caller

    @property
    def key_id(self) -> str | None:
        return self.account.caller.key_id

    def left_s(self) -> float:
        """Seconds until the graph gives up on this request (never below 0)."""
        return max(0.0, self.expires - time.monotonic())

    def charge(self, tokens: int) -> None:
        self.account.charge(tokens)

    def by(self, caller: Caller, meter: Meter | None) -> RequestContext:
        """This context once the edge knows who calls (an API key) and where its tokens are charged."""
        return replace(self, account=Account(caller=caller, meter=meter))

    def asking(self, deadline_ms: int | None) -> RequestContext:
        """This context with the request's own answer-in-time budget (a body field, known after parsing)."""
        return self if deadline_ms is None else replace(self, deadline_ms=deadline_ms)

    def tagged(self, user: str | None = None, metadata: dict[str, str] | None = None) -> RequestContext:
        """This context with the request's `user` and metadata (what a switch or split routes on)."""
        if user is None and not metadata:
            return self
        return replace(self, user=user, metadata=tuple(sorted((metadata or {}).items())))

    def meta(self, key: str) -> str | None:
        return dict(self.metadata).get(key)

    def part(self, suffix: str) -> RequestContext:
        """A part of this request with its own node request id (`<id>-<suffix>`), the same account and deadline."""
        return replace(self, request_id=f"{self.request_id}-{suffix}")
