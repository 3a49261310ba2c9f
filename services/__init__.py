"""BentoML shells: one file per node kind; services/graph.py wires the graph from the config."""
