"""The entry process: the faces (HTTP JSON, OpenAI, Anthropic, gRPC, chat), composition, the named graphs' step
kinds and policies, metering, topology and deployment; it calls the nodes (graph/engine, graph/models) as
services and never loads a model itself."""
