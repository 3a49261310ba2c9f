"""Graph policies: named graphs over the config's nodes that decide (best_of, cascade, pruning, deadlines)."""
