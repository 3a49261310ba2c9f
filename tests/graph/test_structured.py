"""Structured output on tiny random models: the grammar, not the model, makes the JSON valid."""

from __future__ import annotations

import asyncio
import json

import jsonschema_rs
import pytest
from pydantic import ValidationError

from graph.params import GenerationParams as GP
from tests.graph.test_engine import make_engine
from tests.graph.test_onnx_runtime import onnx_dir, onnx_engine, onnx_source  # noqa: F401  fixtures used by `engine`

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "ok", "color", "tags"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}


@pytest.fixture(
    scope="module", params=["causal_lm", "causal_lm_b", "onnx", "llamacpp"], ids=["llama", "gpt2", "onnx", "llamacpp"]
)
def engine(request, tiny_dir):
    """The torch engine on two tiny models, and the onnx and llamacpp backends (the same sampler, so
    the same grammar)."""
    if request.param == "onnx":
        eng = onnx_engine(request.getfixturevalue("onnx_source"), request.getfixturevalue("onnx_dir"))
    elif request.param == "llamacpp":
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install`")
        from tests.graph.test_llamacpp_runtime import llamacpp_engine
        from tests.tiny_models import build_gguf_source

        eng = llamacpp_engine(build_gguf_source(tiny_dir))
    else:
        eng = make_engine(tiny_dir / request.param)
    yield eng
    eng.close()


def test_every_row_of_a_sampled_request_is_schema_valid(engine) -> None:
    params = GP(max_new_tokens=120, do_sample=True, num_return_sequences=3, seed=5, response_format=FORMAT)
    rows = asyncio.run(engine.generate("Hello world", params))
    assert len(rows) == 3
    for r in rows:
        assert r.finish_reason == "stop", r
        jsonschema_rs.validate(SCHEMA, json.loads(r.text))


def test_greedy_constrained_and_free_rows_share_a_batch(engine) -> None:
    free = GP(max_new_tokens=12)
    alone = asyncio.run(engine.generate("The cat", free))[0].text

    async def both():
        return await asyncio.gather(
            engine.generate("The cat", GP(max_new_tokens=120, response_format=FORMAT)),
            engine.generate("The cat", free),
        )

    constrained, unconstrained = asyncio.run(both())
    jsonschema_rs.validate(SCHEMA, json.loads(constrained[0].text))
    assert unconstrained[0].text == alone  # the mask touches its own row only


def test_cut_by_max_new_tokens_says_length(engine) -> None:
    r = asyncio.run(engine.generate("Hi", GP(max_new_tokens=3, response_format=FORMAT)))[0]
    assert r.finish_reason == "length" and r.completion_tokens == 3 and r.text.startswith("{")


def test_json_object_starts_an_object(engine) -> None:
    r = asyncio.run(engine.generate("Hi", GP(max_new_tokens=40, response_format={"type": "json_object"})))[0]
    assert r.text.startswith("{")
    if r.finish_reason == "stop":
        assert isinstance(json.loads(r.text), dict)


@pytest.mark.parametrize(
    "fmt, needle",
    [
        ({"type": "json_schema", "json_schema": {"schema": {"type": "nosuch"}}}, "cannot compile"),
        ({"type": "json_schema"}, "json_schema: required"),
        ({"type": "xml"}, "type"),
    ],
)
def test_a_schema_llguidance_cannot_compile_is_refused_naming_response_format(fmt, needle) -> None:
    with pytest.raises(ValidationError) as err:
        GP(response_format=fmt)
    assert err.value.errors()[0]["loc"][0] == "response_format" and needle in str(err.value)
