"""Chat sessions: per-user multi-turn conversations over the graph's generators, kept in a database."""
