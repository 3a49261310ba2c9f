"""Continuous-batching decode on CPU: scheduler, model runner, KV cache, sampling, detokenizer."""

from graph.engine.generation import GenerationEngine

__all__ = ["GenerationEngine"]
