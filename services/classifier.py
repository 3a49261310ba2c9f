"""Classifier node: scores and embeds texts; adaptive batching merges calls from concurrent requests."""

from __future__ import annotations

import logging
import time
from typing import Any

import bentoml

from graph.config import ClassifierNode
from graph.results import Classification, Embedding
from services.common import setup_logging

log = logging.getLogger("graph")


def make_classifier_service(node: ClassifierNode) -> bentoml.Service[Any]:
    """The classifier service of `node`: a fine-tuned sequence classifier or zero-shot embedding
    similarity (node.mode); `classify` is batchable, so concurrent requests share a forward pass."""

    @bentoml.service(
        name="classifier",
        workers=node.resources.workers,
        resources={"cpu": node.resources.cpu, "memory": node.resources.memory},
        traffic={"timeout": node.resources.timeout_s},
    )
    class Classifier:
        """Labels and scores texts with the classifier of the graph config."""

        def __init__(self) -> None:
            setup_logging()
            import torch

            from graph.models.loading import load_classifier
            from services.store import embedded_lookup, store_lookup

            torch.set_num_threads(node.threads)
            start = time.time()
            self.model = load_classifier(node, store_lookup=store_lookup, embedded_lookup=embedded_lookup)
            log.info("classifier loaded %s in %.1fs", node.model.describe(), time.time() - start)

        @bentoml.api(batchable=True, max_batch_size=node.max_batch_size, max_latency_ms=60_000)
        def classify(self, texts: list[str]) -> list[Classification]:
            """Label and score each text."""
            return self.model.classify(texts)

        @bentoml.api(batchable=True, max_batch_size=node.max_batch_size, max_latency_ms=60_000)
        def embed(self, texts: list[str]) -> list[Embedding]:
            """Sentence embeddings of the classifier's encoder (mean-pooled, unit length), one per text."""
            return self.model.embeddings(texts)

    return Classifier
