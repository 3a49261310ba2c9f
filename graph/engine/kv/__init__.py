"""The node's KV memory beyond the running batch: prompts kept for reuse (prefix_cache.py)."""
