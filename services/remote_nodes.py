"""The entry's client of a node running elsewhere (a node with `url:`, as the Kubernetes manifests wire them).

BentoML gives `bentoml.depends(url=...)` a RemoteProxy (_bentoml_impl/client/proxy2.py) with two habits that
broke the distributed graph, both set right here, on the proxy, when the entry starts:

1. **Its HTTP client timeout is 60 s.** A dependency given by URL alone has no service config to read
   `traffic.timeout` from, so RemoteProxy falls back to 60 s (an aiohttp `ClientTimeout(total=60)` on every
   call): a node call longer than a minute was cut, whatever the node's own timeout and the request's deadline
   said. Here it is the node's own `resources.timeout_s` (the traffic timeout the node serves with), plus the
   1% BentoML adds for a local dependency, so the node answers (or times out) first.
2. **It fetches the node's /schema.json at the entry's start-up**, and a node that did not answer (not started
   yet, or still loading) failed the start-up ("Application startup failed"). Here a node that does not answer
   within STARTUP_SCHEMA_TIMEOUT_S is left for later: the entry starts, /readyz answers 503 naming it
   (services/edge.py ReadyProbe), a request that needs it gets a 503 naming it, and the first call after it
   answers fetches its schema.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from graph.errors import NodeUnavailable

log = logging.getLogger("graph")
STARTUP_SCHEMA_TIMEOUT_S = 5.0  # a node loading its models accepts connections and answers nothing yet
SCHEMA_TIMEOUT_S = 5.0  # a request's own try at a node that was not there at start-up
CLIENT_TIMEOUT_MARGIN = 1.01  # as BentoML's RemoteProxy gives a local dependency (traffic.timeout * 1.01)
_ATTR = "_graph_remote_node"


class RemoteNode:
    """One remote node's BentoML proxy, its client timeout set from the node's config and its schema fetched
    when the node answers rather than only at start-up."""

    def __init__(self, proxy: Any, node: str, timeout_s: float) -> None:
        self.proxy, self.node = proxy, node
        self.timeout_s = timeout_s * CLIENT_TIMEOUT_MARGIN
        client = proxy.to_async
        self.url = str(getattr(client, "url", "?"))
        manager = getattr(client, "_session_manager", None)
        if manager is None or not hasattr(manager, "_timeout"):
            raise RuntimeError(f"bentoml's client of node {node!r} has no session manager to set its timeout on")
        client.timeout = self.timeout_s
        manager._timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        self._setup = client._setup  # BentoML's own: fetch /schema.json, make the endpoint methods
        client._setup = self._at_startup  # what RemoteProxy.__aenter__ (the entry's start-up) calls
        self._lock = asyncio.Lock()
        setattr(proxy, _ATTR, self)

    @property
    def connected(self) -> bool:
        return bool(getattr(self.proxy.to_async, "_setup_done", False))

    async def _at_startup(self) -> None:
        try:
            await asyncio.wait_for(self._setup(), STARTUP_SCHEMA_TIMEOUT_S)
        except Exception as exc:  # refused, timed out, an error status: the node is not there yet
            log.warning(
                "node %s at %s did not answer at start-up (%s: %s): the entry starts without it; /readyz and "
                "requests that need it answer 503 until it does",
                self.node,
                self.url,
                type(exc).__name__,
                str(exc) or f"no answer in {STARTUP_SCHEMA_TIMEOUT_S:.0f} s",
            )

    async def ensure(self) -> None:
        """Connected (the node's schema fetched), or NodeUnavailable naming the node."""
        if self.connected:
            return
        async with self._lock:
            if self.connected:
                return
            try:
                await asyncio.wait_for(self._setup(), SCHEMA_TIMEOUT_S)
            except Exception as exc:
                why = str(exc) or f"no answer in {SCHEMA_TIMEOUT_S:.0f} s"
                raise NodeUnavailable(
                    f"node {self.node!r} cannot be reached at {self.url}: it has not answered since the entry "
                    f"started ({type(exc).__name__}: {why})",
                    node=self.node,
                ) from None
            # the rest of RemoteProxy.__aenter__: the proxy and its sync side take the endpoints
            self.proxy.endpoints = self.proxy.to_sync.endpoints = self.proxy.to_async.endpoints
            self.proxy.to_sync._setup_endpoints()
            self.proxy._setup_endpoints()
            log.info("node %s at %s answered: connected", self.node, self.url)


def install(proxy: Any, node: str, timeout_s: float) -> RemoteNode:
    """Set up `proxy` (the entry's RemoteProxy of remote node `node`) before the entry's start-up enters it."""
    return RemoteNode(proxy, node, timeout_s)


def of(dep: Any) -> RemoteNode | None:
    """The RemoteNode of a node client's dependency; None for a local node."""
    remote = getattr(dep, _ATTR, None)
    return remote if isinstance(remote, RemoteNode) else None


async def connected(dep: Any) -> None:
    """Before a call: a remote node not reached since start-up is reached now (NodeUnavailable if it cannot be)."""
    remote = of(dep)
    if remote is not None:
        await remote.ensure()


def client_timeout_s(dep: Any) -> float | None:
    remote = of(dep)
    return remote.timeout_s if remote is not None else None
