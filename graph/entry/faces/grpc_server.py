"""The gRPC server of the entry service: both gRPC faces, the standard health service and reflection.

Every call gets its request context (caller, request id, deadline) from graph/entry/faces/grpc_context.py.
It runs on the event loop of the entry's worker (started from its on_startup hook), so its calls
on `Graph` share the node clients' sessions with the HTTP face. Health (grpc.health.v1) says
NOT_SERVING until every node answers (each generator's `stats`, one classifier call), then SERVING.
A port already taken is logged as an error and the HTTP face goes on without gRPC.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from graph.config import GrpcConfig
from graph.entry.auth import ApiKeys, AuthConfig
from graph.entry.compose import Graph
from graph.entry.faces import grpc_graph, grpc_text_generator
from graph.entry.faces.grpc_context import Contexts
from protos import inference_graph_pb2_grpc, text_generator_pb2_grpc

log = logging.getLogger("graph")
SERVICES = (grpc_text_generator.SERVICE_NAME, grpc_graph.SERVICE_NAME)
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcFaces:
    """`await GrpcFaces(graph, config.grpc).start()` ... `await faces.stop()`."""

    def __init__(self, graph: Graph, config: GrpcConfig, *, keys: ApiKeys | None = None, poll_s: float = 1.0) -> None:
        self.graph, self.config, self.poll_s = graph, config, poll_s
        self.keys = keys or ApiKeys(AuthConfig())
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()  # pyright: ignore[reportAttributeAccessIssue]  health.py imports _async as aio
        self._watch: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> bool:
        """Bind and serve (False, with an error logged, when the port is taken: HTTP goes on)."""
        if not self.config.enabled:
            return False
        # no SO_REUSEPORT: a second server on a taken port must fail, not share it silently
        contexts = Contexts(self.keys, float(self.graph.config.graph_timeout_s))  # keys, request ids, deadlines
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], interceptors=[contexts])
        text_generator_pb2_grpc.add_TextGeneratorServicer_to_server(
            grpc_text_generator.TextGeneratorServicer(
                self.graph, default_node=self.config.default_node, stream_interval_ms=self.config.stream_interval_ms
            ),
            server,
        )
        inference_graph_pb2_grpc.add_InferenceGraphServicer_to_server(
            grpc_graph.InferenceGraphServicer(self.graph), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        address = f"{self.config.host}:{self.config.port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            log.error("gRPC faces NOT started: cannot bind %s (%s); set grpc.port in the graph config", address, exc)
            return False
        await self._set(NOT_SERVING)
        await server.start()
        self.server = server
        self._watch = asyncio.create_task(self._watch_nodes())
        log.info("gRPC faces on %s: %s (health NOT_SERVING until the nodes answer)", address, ", ".join(SERVICES))
        return True

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace_s)
            self.server = None

    async def _set(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ("", *SERVICES):
            await self.health.set(name, status)

    async def nodes_ready(self, *, classifier: bool = True) -> bool:
        """Every node answers: each generator's stats, and (at boot) the classifier on one text."""
        probes: list[Awaitable[object]] = [g.stats() for g in self.graph.generators.values()]
        if classifier:
            probes.append(self.graph.classifier.classify(["ready?"]))
        try:
            await asyncio.wait_for(asyncio.gather(*probes), timeout=30)
        except Exception as exc:  # not up yet (or gone): say so, try again
            log.debug("gRPC health: nodes not ready: %s: %s", type(exc).__name__, exc)
            return False
        return True

    async def _watch_nodes(self) -> None:
        """NOT_SERVING until every node answers, then SERVING; a generator that stops answering
        turns it back (checked every 30 s once serving, so the nodes' access logs stay quiet)."""
        serving = False
        while True:
            ready = await self.nodes_ready(classifier=not serving)
            if ready != serving:
                serving = ready
                await self._set(SERVING if ready else NOT_SERVING)
                log.info("gRPC health: %s", "SERVING" if ready else "NOT_SERVING")
            await asyncio.sleep(max(self.poll_s, 30.0) if serving else self.poll_s)
