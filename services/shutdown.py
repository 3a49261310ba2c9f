"""Graceful shutdown of the entry: on SIGTERM stop admitting, let in-flight requests finish for
`shutdown_grace_s`, then cancel what is left (the nodes stop working on it; callers get what was
made, with finish_reason "cancelled", or a clean stream error) so every worker exits in time."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

log = logging.getLogger("graph")


class Drain:
    """Shutdown state shared by the entry's edge (refuse new work) and its graph (cancel old work)."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False

    def install(self, loop: asyncio.AbstractEventLoop, cancel_all: Callable[[], int]) -> bool:
        """Chain a SIGTERM handler in front of the server's own (uvicorn stops accepting and waits
        for open requests; this bounds that wait). False where signals cannot be set (not the main
        thread, e.g. in-process tests)."""
        try:
            previous = signal.getsignal(signal.SIGTERM)
        except ValueError:
            return False

        def expire() -> None:
            n = cancel_all()
            log.warning("shutdown: grace period of %ss over, cancelled %d request(s) still running", self.grace_s, n)

        def on_sigterm(signum: int, frame: Any) -> None:
            if not self.draining:
                self.draining = True
                log.warning("shutdown: SIGTERM, refusing new requests; in-flight ones have %ss", self.grace_s)
                loop.call_soon_threadsafe(loop.call_later, self.grace_s, expire)
            if callable(previous):
                previous(signum, frame)

        try:
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread
            return False
        return True
