"""One graph node served on its own, so a graph elsewhere can reach it with `url:` in its config.

    bentoml serve services.node:Node --arg config=configs/default.yaml --arg node=smollm2 --port 3001

`node` is a generator name from the config, or `classifier`. The node ignores its own `url:` key,
so the graph's config (where the node has `url: http://host:3001`) can be used on both sides.
"""

from __future__ import annotations

from typing import Any

import bentoml

from graph.config import GraphConfig, config_from_arguments
from graph.errors import ConfigError
from services.classifier import make_classifier_service
from services.generator import make_generator_service


def node_service(arguments: dict[str, Any]) -> bentoml.Service[Any]:
    """The service of node `arguments["node"]` in the graph config given by the other arguments."""
    args = dict(arguments)
    name = args.pop("node", None)
    config: GraphConfig = config_from_arguments(args)
    choices = sorted(config.generators) + ["classifier"]
    if not name:
        raise ConfigError(f"node: say which node to serve with `--arg node=NAME`, one of {choices}", field="node")
    if name == "classifier":
        return make_classifier_service(config.classifier)
    if name not in config.generators:
        raise ConfigError(f"node: {name!r} is not a node of graph {config.name!r}; one of {choices}", field="node")
    return make_generator_service(name, config.generators[name])


Node = node_service(vars(bentoml.use_arguments()))
