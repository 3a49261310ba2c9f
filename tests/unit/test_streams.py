"""graph/entry/streams.py: a stream is read up to its admission marker before a face answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from graph.entry.streams import ADMITTED, Admitted, admitted_first, opened
from graph.errors import Overloaded


async def source(items: list[object], closed: list[bool]) -> AsyncGenerator[object, None]:
    try:
        for item in items:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        closed.append(True)


def test_events_before_the_marker_are_replayed_and_the_marker_dropped() -> None:
    async def run() -> list[object]:
        events = await opened(source(["a", ADMITTED, "b", "c"], []))
        return [ev async for ev in events]

    assert asyncio.run(run()) == ["a", "b", "c"]


def test_a_refusal_before_the_marker_raises_at_open_and_closes_the_stream() -> None:
    closed: list[bool] = []
    with pytest.raises(Overloaded):
        asyncio.run(opened(source(["a", Overloaded("full", retry_after_s=3), ADMITTED], closed)))
    assert closed == [True]


def test_an_error_after_the_marker_stays_in_the_stream() -> None:
    async def run() -> list[object]:
        events = await opened(source([ADMITTED, "a", Overloaded("late")], []))
        out = []
        with pytest.raises(Overloaded):
            async for ev in events:
                out.append(ev)
        return out

    assert asyncio.run(run()) == ["a"]


def test_closing_the_opened_stream_closes_its_source() -> None:
    closed: list[bool] = []

    async def run() -> None:
        events = await opened(admitted_first(source(["a", "b"], closed)))
        assert isinstance(await anext(events), str)
        await events.aclose()

    asyncio.run(run())
    assert closed == [True]
    assert not isinstance("a", Admitted) and repr(ADMITTED) == "ADMITTED"
