"""Per-request work budgets of generator nodes, checked at the graph's edge before any work starts."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from graph.errors import InvalidRequest
from graph.params import GenerationParams


class RequestBudget(BaseModel):
    """Work one request may ask of a node, checked at the graph's edge before any work starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_rows: int = Field(
        default=64, ge=1, le=100_000, description="Rows = prompts x num_return_sequences (the default fits 64 prompts)."
    )
    max_new_tokens: int = Field(
        default=16_384,
        ge=1,
        le=100_000_000,
        description="Rows x max_new_tokens (the default fits 64 prompts x 256 tokens).",
    )


def check_budget(node: str, budget: RequestBudget, prompts: int, params: GenerationParams) -> None:
    """InvalidRequest (400) naming the rule when prompts x sequences rows, or those rows x
    max_new_tokens, are above node's `budget` (generators.<node>.budget in the config)."""
    rows = prompts * params.num_return_sequences
    what = f"{prompts} prompt{'s' if prompts != 1 else ''} x {params.num_return_sequences} sequences"
    if rows > budget.max_rows:
        raise InvalidRequest(
            f"{what} = {rows} rows is above the budget of node {node!r}: {budget.max_rows} rows per request "
            f"(generators.{node}.budget.max_rows); send fewer prompts or sequences, or split the request",
            field="prompts" if prompts > 1 else "params.num_return_sequences",
        )
    tokens = rows * params.max_new_tokens
    if tokens > budget.max_new_tokens:
        raise InvalidRequest(
            f"{what} x max_new_tokens {params.max_new_tokens} = {tokens} new tokens is above the budget of "
            f"node {node!r}: {budget.max_new_tokens} per request (generators.{node}.budget.max_new_tokens); "
            "lower max_new_tokens or split the request",
            field="params.max_new_tokens",
        )
