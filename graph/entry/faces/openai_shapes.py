"""The OpenAI face's answer shapes: one choice before it becomes OpenAI's, its extra fields, usage,
and logprobs in the chat and legacy completion layouts (the `openai` package's types)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from openai.types import CompletionUsage
from openai.types.chat.chat_completion import ChoiceLogprobs
from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob, TopLogprob
from openai.types.completion_choice import Logprobs
from pydantic import BaseModel

from graph.entry.policies.schemas import PolicyUsage
from graph.results import Classification, GenerationResult, TokenLogprob

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Scored:
    """One choice before it becomes OpenAI's: node, which prompt, the result, its score if scored."""

    node: str
    prompt_index: int
    result: GenerationResult
    score: Classification | None
    spent: PolicyUsage | None = None  # a named graph's answer: the tokens of all its candidates
    path: str | None = None  # a named graph's answer: the path it took (graph.entry.policies.schemas.path_text)


def with_extras(choice: M, extras: dict[str, object]) -> M:
    """`choice` carrying our extra fields: the openai types keep extras (extra="allow") and dump them,
    though their typed constructors do not name them."""
    for name, value in extras.items():
        setattr(choice, name, value)
    return choice


def extras_of(c: Scored) -> dict[str, object]:
    """A scored choice's extra fields (OpenAI clients ignore them; ours read them)."""
    if c.score is None:
        return {}
    extras: dict[str, object] = {"model": c.node, "score": c.score.score, "label": c.score.label}
    if c.spent is not None:
        extras["candidate"] = c.spent.winner
    if c.path is not None:
        extras["path"] = c.path
    return extras


def usage_of(choices: list[Scored]) -> CompletionUsage:
    """Each node's prompt counted once per prompt, every choice's completion tokens; a named graph's
    choice counts all its candidates' tokens, and the usage says how many there were and which won."""
    if any(c.spent is not None for c in choices):
        spent = [c.spent for c in choices if c.spent is not None]
        prompt = sum(u.prompt_tokens for u in spent)
        completion = sum(u.completion_tokens for u in spent)
        usage = CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        extras: dict[str, object] = {
            "candidates": sum(u.candidates for u in spent),
            "winners": [u.winner for u in spent],
        }
        paths = [c.path for c in choices if c.path is not None]
        if paths:
            extras["paths"] = paths
        return with_extras(usage, extras)
    prompt = sum({(c.node, c.prompt_index): c.result.prompt_tokens for c in choices}.values())
    completion = sum(c.result.completion_tokens for c in choices)
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def chat_logprobs(tokens: list[TokenLogprob] | None) -> ChoiceLogprobs | None:
    if tokens is None:
        return None
    return ChoiceLogprobs(
        content=[
            ChatCompletionTokenLogprob(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.token.encode()),
                top_logprobs=[
                    TopLogprob(token=a.token, logprob=a.logprob, bytes=list(a.token.encode())) for a in t.top_logprobs
                ],
            )
            for t in tokens
        ]
    )


def text_logprobs(tokens: list[TokenLogprob] | None) -> Logprobs | None:
    """Legacy completions logprobs: parallel lists, text_offset into the choice's text."""
    if tokens is None:
        return None
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    return Logprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[{a.token: a.logprob for a in t.top_logprobs} for t in tokens],
        text_offset=offsets,
    )
