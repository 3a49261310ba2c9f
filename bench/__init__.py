"""Benchmark helpers: the seed tutorial's one-request-at-a-time graph, served as the baseline."""
