"""A generator node seen through one request's context: every token it generates is charged to the request.

`Graph.node(ctx, name)` hands these out; policies, chat turns and the fan-out all call generators through
them, so no face can forget to charge. A whole call is charged by its results' completion tokens; a stream
as its events report tokens, so a stream cut off early (a pruned candidate, a client that left) pays for
what it generated before the cut.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from graph.chat_format import Prompt
from graph.entry.context import RequestContext
from graph.entry.nodes import GeneratorClient
from graph.params import GenerationParams
from graph.results import GenerationResult, StreamEvent


class Metered:
    """`client`'s generate and stream, charged to `ctx`'s account; the rest passes through."""

    def __init__(self, client: GeneratorClient, ctx: RequestContext) -> None:
        self.client, self.ctx = client, ctx
        # Kept prompts (a node's prefix cache) are per caller: one key's never speed up another's.
        self.scope = ctx.key_id or ""

    async def generate(
        self, prompts: list[Prompt], params: GenerationParams, request_id: str, scope: str = "", reserve_s: float = 0.0
    ) -> list[list[GenerationResult]]:
        out = await self.client.generate(prompts, params, request_id, scope=scope or self.scope, reserve_s=reserve_s)
        self.ctx.charge(sum(r.completion_tokens for rows in out for r in rows))
        return out

    async def stream(
        self,
        prompt: Prompt,
        params: GenerationParams,
        request_id: str,
        interval_ms: int,
        on_admitted: Callable[[], None] | None = None,
        scope: str = "",
        reserve_s: float = 0.0,
    ) -> AsyncIterator[StreamEvent]:
        seen: dict[int, int] = {}  # sequence index -> tokens charged so far
        async for ev in self.client.stream(
            prompt,
            params,
            request_id,
            interval_ms,
            on_admitted=on_admitted,
            scope=scope or self.scope,
            reserve_s=reserve_s,
        ):
            now = ev.result.completion_tokens if ev.result is not None else ev.tokens
            if now is not None and now > seen.get(ev.index, 0):
                self.ctx.charge(now - seen.get(ev.index, 0))
                seen[ev.index] = now
            yield ev

    async def cancel(self, request_id: str) -> bool:
        return await self.client.cancel(request_id)

    async def count_tokens(self, prompt: str, template: bool = True) -> int:
        return await self.client.count_tokens(prompt, template)

    async def stats(self) -> dict[str, float | str]:
        return await self.client.stats()
