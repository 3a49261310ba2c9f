"""Unit tests of graph/entry/topology.py (what GET /graph answers) and the config's `playground` section."""

from __future__ import annotations

import pytest

from graph.config import load_config, parse_config
from graph.entry.topology import CLASSIFIER, OUTPUT, PROMPT, GraphInfo, describe
from graph.errors import ConfigError


def test_default_graph_described_in_config_order() -> None:
    cfg = load_config("configs/default.yaml")
    info = describe(cfg)
    assert [g.name for g in info.generators] == list(cfg.generators)
    smol = info.generators[0]
    assert smol.model == cfg.generators["smollm2"].model.describe() and smol.chat_template is True
    assert smol.defaults == cfg.generators["smollm2"].defaults
    assert info.classifier.mode == "zero_shot" and info.classifier.score_label in info.classifier.labels
    # every generator between the prompt and the classifier; the classifier feeds the output
    for g in cfg.generators:
        assert (PROMPT, g) in {(e.source, e.target) for e in info.edges}
        assert (g, CLASSIFIER) in {(e.source, e.target) for e in info.edges}
    assert info.edges[-1].source == CLASSIFIER and info.edges[-1].target == OUTPUT
    assert len(info.edges) == 2 * len(cfg.generators) + 1
    assert GraphInfo.model_validate_json(info.model_dump_json()) == info  # what crosses the wire reads back


def test_remote_node_shows_its_url() -> None:
    data = load_config("configs/tiny.yaml").model_dump(exclude_unset=True)
    data["generators"]["tiny_b"]["url"] = "http://elsewhere:3001"
    info = describe(parse_config(data))
    assert [g.remote_url for g in info.generators] == [None, "http://elsewhere:3001"]


def test_playground_section() -> None:
    data = load_config("configs/tiny.yaml").model_dump(exclude_unset=True)
    assert describe(parse_config(data)).refresh_ms == 1000  # the default
    cfg = parse_config({**data, "playground": {"enabled": False, "refresh_ms": 500}})
    assert cfg.playground.enabled is False and describe(cfg).refresh_ms == 500
    with pytest.raises(ConfigError, match=r"playground.refresh_ms: Input should be greater than or equal to 200"):
        parse_config({**data, "playground": {"refresh_ms": 10}})
    with pytest.raises(ConfigError, match=r"playground.enabeld: unknown key"):
        parse_config({**data, "playground": {"enabeld": True}})
