"""Background tasks: run an awaitable on its own, not cancelled with its caller, referenced until it ends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

_RUNNING: set[asyncio.Future[Any]] = set()  # asyncio keeps only weak references to tasks


def background(aw: Awaitable[Any]) -> asyncio.Future[Any]:
    """Run `aw` on its own (not cancelled with the caller: closing a stream, stopping a cancelled
    request's nodes or candidates), keeping a reference until it ends."""
    fut = asyncio.ensure_future(aw)
    _RUNNING.add(fut)
    fut.add_done_callback(_RUNNING.discard)
    return fut
