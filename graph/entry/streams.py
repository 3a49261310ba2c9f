"""Streams that decide admission before their first byte: a refusal is the face's 429, never a 200 with an error inside.

A stream made for a face (`Graph.open_stream`, `ChatSession.stream`) yields `ADMITTED` once every node it
uses has accepted the request (a node accepts when its scheduler queued the request: after that it is never
refused, only answered, cut at its deadline or failed). `opened` reads such a stream up to that marker, so a
refusal (Overloaded: a full queue, or shed for max_wait_s) is raised while the face can still answer with a
status and a `Retry-After`; the events read before the marker are replayed first.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Final, TypeVar

T = TypeVar("T")


class Admitted:
    """The marker a stream yields once every node has accepted its request."""

    def __repr__(self) -> str:
        return "ADMITTED"


ADMITTED: Final = Admitted()


async def opened(events: AsyncGenerator[T | Admitted, None]) -> AsyncGenerator[T, None]:
    """`events` read up to its ADMITTED marker (an error before it is raised here, before any byte is
    sent), then an iterator of its events without the marker: those read already, then the rest.
    Closing the returned iterator closes `events`."""
    head: list[T] = []
    try:
        async for ev in events:
            if isinstance(ev, Admitted):
                break
            head.append(ev)
    except BaseException:
        with contextlib.suppress(Exception):
            await events.aclose()
        raise
    return _replay(head, events)


async def _replay(head: list[T], rest: AsyncGenerator[T | Admitted, None]) -> AsyncGenerator[T, None]:
    try:
        for ev in head:
            yield ev
        async for ev in rest:
            if not isinstance(ev, Admitted):
                yield ev
    finally:
        await rest.aclose()


async def admitted_first(events: AsyncIterator[T]) -> AsyncGenerator[T | Admitted, None]:
    """`events` with ADMITTED in front: for streams whose nodes admit their own work as they go
    (a named graph's candidates), which a face opens at once."""
    try:
        yield ADMITTED
        async for ev in events:
            yield ev
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
