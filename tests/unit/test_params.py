"""Unit tests of graph/params.py: bounds, cross-field rules, merging defaults with overrides."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from graph.errors import InvalidRequest
from graph.params import GenerationOverrides, GenerationParams, merge_params

DEFAULTS = GenerationParams(max_new_tokens=16, do_sample=True, temperature=0.7)


def merge(**kw):
    # model_construct: skip the overrides' own bounds, so the merge's checks are what is tested
    return merge_params(DEFAULTS, GenerationOverrides.model_construct(**kw), max_new_tokens_limit=64)


@pytest.mark.parametrize(
    "kw, loc",
    [
        ({"temperature": -1}, ("temperature",)),
        ({"top_p": 1.5}, ("top_p",)),
        ({"max_new_tokens": "8"}, ("max_new_tokens",)),  # strict: a string is not a number
        ({"top_logprobs": False}, ("top_logprobs",)),  # strict: a flag is not a number
        ({"do_sample": 1}, ("do_sample",)),  # strict: a number is not a flag
        ({"max_new_tokens": 5000}, ("max_new_tokens",)),
    ],
)
def test_overrides_carry_the_bounds_and_are_strict(kw, loc) -> None:
    """The request's own schema refuses what GenerationParams refuses (and the API spec shows it)."""
    with pytest.raises(ValidationError) as exc:
        GenerationOverrides.model_validate_json(json.dumps(kw))
    assert exc.value.errors()[0]["loc"] == loc
    schema = GenerationOverrides.model_json_schema()["properties"]
    temperature = {k: v for o in schema["temperature"]["anyOf"] for k, v in o.items()}
    assert (temperature["minimum"], temperature["maximum"]) == (0.0, 5.0)


def test_overrides_replace_only_given_fields() -> None:
    p = merge(top_k=5)
    assert (p.top_k, p.temperature, p.max_new_tokens) == (5, 0.7, 16)
    assert merge_params(DEFAULTS, None, max_new_tokens_limit=64) == DEFAULTS


@pytest.mark.parametrize(
    "kw, field, rule",
    [
        ({"temperature": -1}, "params.temperature", "greater than or equal to 0"),
        ({"top_p": 1.5}, "params.top_p", "less than or equal to 1"),
        ({"top_p": 0}, "params.top_p", "greater than 0"),
        ({"max_new_tokens": 65}, "params.max_new_tokens", "limit of 64"),
        ({"max_new_tokens": 0}, "params.max_new_tokens", "greater than or equal to 1"),
        ({"repetition_penalty": 0}, "params.repetition_penalty", "greater than 0"),
        ({"do_sample": False, "num_return_sequences": 2}, "params.num_return_sequences", "greedy"),
        ({"temperature": 0.0}, "params.temperature", "do_sample=false"),
        ({"top_logprobs": 3}, "params.top_logprobs", "logprobs=true"),
        ({"stop": [""]}, "params.stop.0", "at least 1 character"),
        ({"stop": ["x" * 65]}, "params.stop.0", "at most 64 characters"),
    ],
)
def test_invalid_values_name_field_and_rule(kw, field, rule) -> None:
    with pytest.raises(InvalidRequest) as exc:
        merge(**kw)
    assert exc.value.field == field
    assert field in exc.value.message and rule in exc.value.message


def test_unknown_override_rejected() -> None:
    with pytest.raises(ValidationError, match="bogus"):
        GenerationOverrides(bogus=1)


def test_frozen() -> None:
    with pytest.raises(ValidationError):
        DEFAULTS.temperature = 2.0  # type: ignore[misc]


def test_transformers_names_in_one_place() -> None:
    kw = merge(top_k=0, top_p=0.9, stop=["\n"], max_time_ms=1500).transformers_kwargs()
    assert kw == {
        "max_new_tokens": 16,
        "do_sample": True,
        "num_return_sequences": 1,
        "repetition_penalty": 1.0,
        "temperature": 0.7,
        "top_k": None,
        "top_p": 0.9,
        "stop_strings": ["\n"],
        "max_time": 1.5,
    }
    greedy = GenerationParams().transformers_kwargs()
    assert "temperature" not in greedy and greedy["do_sample"] is False
