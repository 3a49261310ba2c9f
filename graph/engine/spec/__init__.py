"""Speculative decoding: draft tokens proposed from a row's own text (ngram.py), verified in the batch (verify.py)."""
