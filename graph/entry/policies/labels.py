"""Zero-shot labels of a switch or guard: a text against label descriptions by the classifier node's sentence
embeddings (softmax of cosines / temperature), one classifier call per check; descriptions embedded once."""

from __future__ import annotations

import math
from typing import Protocol

from graph.entry.context import RequestContext
from graph.entry.policies.config import ZeroShot
from graph.results import Classification, Embedding


class LabelVectors:
    """The embedded descriptions of every label set seen (keyed by the set), kept for the process's life."""

    def __init__(self) -> None:
        self.vectors: dict[tuple[tuple[str, str], ...], list[list[float]]] = {}


class Embedder(Protocol):
    label_vectors: LabelVectors

    async def embed(self, ctx: RequestContext, texts: list[str]) -> list[Embedding]: ...


async def classify(host: Embedder, ctx: RequestContext, zs: ZeroShot, texts: list[str]) -> list[Classification]:
    """Each of `texts` sorted into `zs`'s labels: one embed call (the descriptions ride along the first time)."""
    key = tuple(zs.labels.items())
    cache = host.label_vectors
    known = cache.vectors.get(key)
    asked = texts if known is not None else [*texts, *zs.labels.values()]
    out = await host.embed(ctx, asked)
    vectors = [e.vector for e in out]
    if known is None:
        known = vectors[len(texts) :]
        cache.vectors[key] = known
    labels = list(zs.labels)
    results = []
    for v in vectors[: len(texts)]:
        sims = [sum(a * b for a, b in zip(v, d)) / zs.temperature for d in known]
        top = max(sims)
        exps = [math.exp(s - top) for s in sims]
        total = sum(exps)
        probs = {label: e / total for label, e in zip(labels, exps)}
        best = max(probs, key=probs.__getitem__)
        results.append(Classification(label=best, score=probs[best], labels=probs))
    return results
