"""The `policies` config (named graphs) and the deadline splitter, without models."""

from __future__ import annotations

import time

import pytest
import yaml

from graph.config import ROOT, load_config, parse_config
from graph.entry.policies.deadline import Deadline, Latencies
from graph.entry.policies.registry import graph_names, resolve
from graph.errors import ConfigError, InvalidRequest


def tiny_config(graphs, default="all"):
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data["policies"] = {"default": default, "graphs": graphs}
    return parse_config(data, source="test")


def test_shipped_configs_list_their_graphs():
    assert graph_names(load_config("configs/default.yaml")) == [
        "all",
        "best_of_3",
        "best_of_3_pruned",
        "cascade",
        "polite",
        "router",
        "canary",
        "failover",
        "refine",
    ]
    assert graph_names(load_config("configs/gpt2.yaml")) == ["all"]  # no policies key: only the built-in graph


def test_unknown_graph_is_a_400_listing_the_graphs():
    config = load_config("configs/tiny.yaml")
    assert resolve(config, None) is None and resolve(config, "all") is None
    assert resolve(config, "best").policy == "best_of"
    with pytest.raises(InvalidRequest) as err:
        resolve(config, "bset")
    assert err.value.field == "graph" and "'bset'" in err.value.message and "cheap_first" in err.value.message


@pytest.mark.parametrize(
    "graphs, default, names",
    [
        ({"x": {"policy": "best_of", "nodes": {"gpt5": 1}}}, "all", ["policies.graphs.x.nodes", "gpt5"]),
        (
            {"x": {"policy": "cascade", "order": ["tiny_a"], "gate": {"label": "happy", "min_score": 0.5}}},
            "all",
            ["policies.graphs.x.gate.label", "happy"],
        ),
        ({"x": {"policy": "best_of", "nodes": {"tiny_a": 1}, "prune": {"every": 4}}}, "all", ["prune.every"]),
        ({"x": {"policy": "best_of", "nodes": {"tiny_a": 0}}}, "all", ["nodes.tiny_a"]),
        ({"x": {"policy": "vote", "nodes": {"tiny_a": 1}}}, "all", ["policies.graphs.x", "vote"]),
        ({}, "best", ["default", "best"]),
    ],
)
def test_bad_graph_settings_fail_at_startup_naming_them(graphs, default, names):
    with pytest.raises(ConfigError) as err:
        tiny_config(graphs, default)
    for name in names:
        assert name in str(err.value), str(err.value)


def test_deadline_keeps_scoring_and_overrun_shares_from_recent_calls():
    lat = Latencies()
    assert Deadline.of(None, lat) is None
    first = Deadline.of(3000, lat)
    assert (first.score_ms, first.overrun_ms) == (150.0, 100.0)  # nothing measured yet
    for ms in [100.0] * 9 + [400.0]:
        lat.record(ms)
    for ms in [50.0] * 7 + [200.0] * 3:
        lat.record_overrun(ms)
    d = Deadline.of(3000, lat)
    assert (d.score_ms, d.overrun_ms) == (400.0, 200.0)  # 90th / 75th percentiles: a slow call still fits
    cap = d.generate_cap_ms()
    assert 3000 - 400 - 200 - 120 - 50 <= cap <= 3000 - 400 - 200 - 120  # minus scoring, overrun, 4% slack
    d.cap_ends = time.monotonic() - 10.0  # pretend the generators came back 10 s after their cap
    d.generated()
    assert max(lat.overruns) >= 9000.0
    lat.overruns.extend([9000.0] * 32)
    assert Deadline.of(3000, lat).generate_cap_ms() >= 3000 - 400 - 0.4 * 3000 - 120 - 50  # overrun share capped
    assert Deadline(100, 400.0).generate_cap_ms() == 1  # no time: the generators stop after one token


def test_deadline_caps_max_time_ms_keeping_a_lower_one():
    from graph.params import GenerationOverrides

    d = Deadline(3000, 100.0)
    assert Deadline.capped(None, None) is None
    capped = Deadline.capped(d, GenerationOverrides(max_new_tokens=8))
    assert capped.max_time_ms <= 3000 - 100 - 100 - 120 and capped.max_new_tokens == 8
    assert Deadline.capped(d, GenerationOverrides(max_time_ms=50)).max_time_ms == 50
