"""Unit tests of graph/config.py: shipped configs validate, mistakes fail naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from graph.config import CONFIG_DIR, config_from_arguments, load_config, parse_config
from graph.errors import ConfigError


def raw(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", ["default", "gpt2", "tiny"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    # Every key of the file is read as written: nothing dropped, renamed or coerced.
    assert cfg.model_dump(exclude_unset=True) == raw(name)
    assert len(cfg.generators) >= 2


def test_default_uses_embedded_models_only() -> None:
    cfg = load_config("configs/default.yaml")
    kinds = {n.model.kind for n in cfg.generators.values()} | {cfg.classifier.model.kind}
    assert kinds == {"embedded"}
    assert sorted(cfg.generators) == ["gemma3", "smollm2"]


def test_gpt2_config_points_at_hub() -> None:
    cfg = load_config("configs/gpt2.yaml")
    assert cfg.generators["gpt2"].model.hub == "openai-community/gpt2"
    assert cfg.classifier.mode == "sequence_classification"


def test_unknown_key_is_named() -> None:
    data = raw("default")
    data["generators"]["smollm2"]["max_new_token"] = 5
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert "generators.smollm2.max_new_token" in str(exc.value)
    assert "unknown key" in str(exc.value)


def test_bad_value_is_named() -> None:
    data = raw("default")
    data["generators"]["gemma3"]["defaults"]["temperature"] = -1
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert "generators.gemma3.defaults.temperature" in str(exc.value)


def test_model_ref_needs_exactly_one_source() -> None:
    data = raw("default")
    data["classifier"]["model"] = {"hub": "a/b", "path": "/x"}
    with pytest.raises(ConfigError, match="exactly one of hub, path, bentoml, embedded"):
        parse_config(data)


def test_zero_shot_score_label_must_be_a_label() -> None:
    data = raw("default")
    data["classifier"]["score_label"] = "happy"
    with pytest.raises(ConfigError, match="score_label"):
        parse_config(data)


def test_defaults_above_node_limit_fail() -> None:
    data = raw("default")
    data["generators"]["smollm2"]["defaults"]["max_new_tokens"] = 1000
    with pytest.raises(ConfigError, match="max_new_tokens_limit"):
        parse_config(data)


def test_more_than_two_generators() -> None:
    data = raw("tiny")
    data["generators"]["tiny_c"] = copy.deepcopy(data["generators"]["tiny_a"])
    assert list(parse_config(data).generators) == ["tiny_a", "tiny_b", "tiny_c"]


def test_bad_node_name() -> None:
    data = raw("tiny")
    data["generators"]["Bad-Name"] = data["generators"].pop("tiny_a")
    with pytest.raises(ConfigError, match="node names must match"):
        parse_config(data)


def test_arguments_default_and_file() -> None:
    assert config_from_arguments({}).name == "default"
    assert config_from_arguments({"config": "configs/tiny.yaml"}).name == "tiny"
    assert config_from_arguments(raw("gpt2")).name == "gpt2"


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.yaml")


def test_generator_threads_split_the_cpus_over_local_nodes():
    cfg = load_config("configs/default.yaml")
    assert cfg.generator_threads("smollm2", cpus=2) == 1 and cfg.generator_threads("gemma3", cpus=8) == 4
    data = cfg.model_dump(exclude_none=True)
    data["generators"]["gemma3"]["url"] = "http://elsewhere:3000"  # served elsewhere: not counted
    data["generators"]["smollm2"]["runtime"] = {"threads": 3}
    cfg = parse_config(data)
    assert cfg.generator_threads("smollm2", cpus=2) == 3 and cfg.generator_threads("gemma3", cpus=2) == 2
