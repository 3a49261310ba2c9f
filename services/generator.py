"""Generator node: one BentoML service per configured generator, all made from this one class."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncGenerator

import bentoml
from pydantic import BaseModel

from graph.config import GeneratorNode
from graph.errors import GraphError
from graph.params import GenerationParams
from services.common import error_response, setup_logging

log = logging.getLogger("graph")


class GeneratorBase:
    """A text generator over graph.engine.GenerationEngine; NODE and CONFIG are set per node."""

    NODE: str = ""
    CONFIG: GeneratorNode

    def __init__(self) -> None:
        setup_logging()
        from graph.engine import GenerationEngine
        from graph.loading import load_causal_lm
        from services.store import embedded_lookup, store_lookup

        start = time.time()
        model, tokenizer = load_causal_lm(
            self.CONFIG.model, store_lookup=store_lookup, embedded_lookup=embedded_lookup,
            quantize=self.CONFIG.runtime.quantize,
        )
        self.engine = GenerationEngine(
            model,
            tokenizer,
            name=self.NODE,
            max_batch_size=self.CONFIG.scheduler.max_batch_size,
            max_queue=self.CONFIG.scheduler.max_queue,
            max_prompt_tokens=self.CONFIG.max_prompt_tokens,
            threads=self.CONFIG.runtime.threads,
        )
        if not self.engine.warmup():
            log.warning("node %s: warm-up did not finish in time", self.NODE)
        log.info("node %s loaded %s in %.1fs", self.NODE, self.CONFIG.model.describe(), time.time() - start)

    def __is_ready__(self) -> bool:
        return self.engine is not None

    @bentoml.api
    async def generate(
        self, prompts: list[str], params: GenerationParams, request_id: str = ""
    ) -> list[list[dict[str, Any]]]:
        """Generate for each prompt; one list of results (num_return_sequences) per prompt."""
        try:
            outs = await asyncio.gather(
                *[self.engine.generate(p, params, request_id=request_id or None) for p in prompts]
            )
        except GraphError as err:
            return error_response(err)  # type: ignore[return-value]
        log.info("request_id=%s node=%s prompts=%d", request_id, self.NODE, len(prompts))
        return [[_dump(r) for r in rows] for rows in outs]

    @bentoml.api
    async def generate_stream(
        self, prompt: str, params: GenerationParams, request_id: str = "", interval_ms: int = 0
    ) -> AsyncGenerator[str, None]:
        """Stream events as JSON lines (errors arrive as an `error` line)."""
        try:
            async for ev in self.engine.stream(
                prompt, params, request_id=request_id or None, interval_ms=interval_ms
            ):
                yield ev.model_dump_json() + "\n"
        except GraphError as err:
            import json

            yield json.dumps({"error": err.to_dict(), "status": err.status}) + "\n"

    @bentoml.api
    async def cancel(self, request_id: str) -> bool:
        """Stop every row of a request (the entry calls this when its client disconnects)."""
        return self.engine.cancel(request_id)

    @bentoml.api
    async def stats(self) -> dict[str, float]:
        """Counters of this node's engine: generated tokens, requests, active rows, queue."""
        return {k: float(v) for k, v in self.engine.stats().items()}


def _dump(obj: Any) -> dict[str, Any]:
    return obj.model_dump() if isinstance(obj, BaseModel) else dict(obj)


def make_generator_service(name: str, node: GeneratorNode) -> bentoml.Service[Any]:
    """A distinct BentoML service (own worker process) for the generator node `name`."""
    cls = type(
        f"Generator_{name}",
        (GeneratorBase,),
        {"NODE": name, "CONFIG": node, "__module__": __name__, "__doc__": f"Generator node {name!r}."},
    )
    return bentoml.service(
        name=f"generator_{name}",
        workers=node.resources.workers,
        resources={"cpu": node.resources.cpu, "memory": node.resources.memory},
        traffic={"timeout": node.resources.timeout_s},
    )(cls)
