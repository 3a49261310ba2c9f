"""Classifier node: scores texts; adaptive batching merges calls from concurrent requests."""

from __future__ import annotations

import logging
import time
from typing import Any

import bentoml

from graph.config import ClassifierNode
from graph.schemas import Classification
from services.common import setup_logging

log = logging.getLogger("graph")


class ClassifierBase:
    """Fine-tuned sequence classifier or zero-shot embedding classifier, per CONFIG.mode."""

    CONFIG: ClassifierNode

    def __init__(self) -> None:
        setup_logging()
        from graph.models.loading import load_classifier
        from services.store import embedded_lookup, store_lookup

        import torch

        torch.set_num_threads(self.CONFIG.threads)
        start = time.time()
        self.model = load_classifier(
            self.CONFIG, store_lookup=store_lookup, embedded_lookup=embedded_lookup
        )
        log.info("classifier loaded %s in %.1fs", self.CONFIG.model.describe(), time.time() - start)

    def classify(self, texts: list[str]) -> list[Classification]:
        return self.model.classify(texts)


def make_classifier_service(node: ClassifierNode) -> bentoml.Service[Any]:
    """The classifier service; `classify` is batchable so concurrent requests share a forward pass."""

    def classify(self: ClassifierBase, texts: list[str]) -> list[Classification]:
        """Label and score each text."""
        return ClassifierBase.classify(self, texts)

    api = bentoml.api(batchable=True, max_batch_size=node.max_batch_size, max_latency_ms=60_000)
    cls = type(
        "Classifier",
        (ClassifierBase,),
        {"CONFIG": node, "classify": api(classify), "__module__": __name__},
    )
    return bentoml.service(
        name="classifier",
        workers=node.resources.workers,
        resources={"cpu": node.resources.cpu, "memory": node.resources.memory},
        traffic={"timeout": node.resources.timeout_s},
    )(cls)
