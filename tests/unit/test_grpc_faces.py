"""The gRPC contracts and their mapping: stubs match grpcio-tools' output, the seed's proto is the seed's
contract, the params message mirrors GenerationParams, errors map to the right codes, fragments are paced."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor

from graph.entry.faces.grpc_errors import status_of
from graph.entry.faces.grpc_text_generator import paced
from graph.errors import InvalidRequest, NodeFailure, NodeTimeout, Overloaded
from graph.params import GenerationParams
from protos import inference_graph_pb2, text_generator_pb2

ROOT = Path(__file__).resolve().parents[2]
STUBS = [
    "text_generator_pb2.py",
    "text_generator_pb2.pyi",
    "text_generator_pb2_grpc.py",
    "inference_graph_pb2.py",
    "inference_graph_pb2.pyi",
    "inference_graph_pb2_grpc.py",
]


def test_committed_stubs_are_grpc_tools_output(tmp_path: Path) -> None:
    """protos/*_pb2*.py are what `make protos` (grpc_tools.protoc) makes of the .proto files, byte for byte."""
    (tmp_path / "protos").mkdir()
    for proto in ("text_generator.proto", "inference_graph.proto"):
        (tmp_path / "protos" / proto).write_bytes((ROOT / "protos" / proto).read_bytes())
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            "--python_out=.",
            "--pyi_out=.",
            "--grpc_python_out=.",
            "protos/text_generator.proto",
            "protos/inference_graph.proto",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    stale = [s for s in STUBS if (tmp_path / "protos" / s).read_bytes() != (ROOT / "protos" / s).read_bytes()]
    assert stale == [], f"run `make protos`: {stale} differ from the .proto files"


def test_text_generator_proto_is_the_seeds_contract() -> None:
    """Service, methods, messages, field names, numbers and types exactly as the seed's README gives them."""
    f = text_generator_pb2.DESCRIPTOR
    assert f.package == ""  # the seed's proto has no package: the service is /TextGenerator/...
    service = f.services_by_name["TextGenerator"]
    methods = {
        m.name: (m.input_type.name, m.output_type.name, m.server_streaming, m.client_streaming) for m in service.methods
    }
    assert methods == {
        "Generate": ("GenerateRequest", "GenerateResponse", False, False),
        "GenerateStreamed": ("GenerateStreamedRequest", "GenerateStreamedResponse", True, False),
    }
    string, int32 = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_INT32
    messages = {name: {(fd.name, fd.number, fd.type) for fd in m.fields} for name, m in f.message_types_by_name.items()}
    assert messages == {
        "GenerateRequest": {("text", 1, string), ("max_length", 2, int32)},
        "GenerateResponse": {("text", 1, string)},
        "GenerateStreamedRequest": {
            ("text", 1, string),
            ("max_length", 2, int32),
            ("intermediate_result_interval_ms", 3, int32),
        },
        "GenerateStreamedResponse": {("text_fragment", 1, string)},
    }


def test_params_message_mirrors_generation_params() -> None:
    fields = inference_graph_pb2.GenerationParams.DESCRIPTOR.fields_by_name
    assert set(fields) == set(GenerationParams.model_fields)
    for name, fd in fields.items():  # unset means "the node's default": presence on every scalar
        assert fd.has_presence or fd.is_repeated, name


@pytest.mark.parametrize(
    "err, code",
    [
        (InvalidRequest("text: must not be empty", field="text"), grpc.StatusCode.INVALID_ARGUMENT),
        (Overloaded("queue full", retry_after_s=2), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (NodeFailure("boom", node="tiny_a"), grpc.StatusCode.UNAVAILABLE),
        (NodeTimeout("slow", node="tiny_a"), grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_error_codes(err, code) -> None:
    got, trailers = status_of(err.body())
    assert got == code
    meta = dict(trailers)
    assert meta["x-error-kind"] == err.kind
    if isinstance(err, InvalidRequest):
        assert meta["x-error-field"] == "text"
    if isinstance(err, Overloaded):
        assert meta["retry-after"] == "2"
    if isinstance(err, NodeFailure):
        assert meta["x-error-node"] == "tiny_a"


def test_paced_joins_fragments_and_sends_the_last_at_once() -> None:
    async def source():
        for i in range(12):
            await asyncio.sleep(0.02)
            yield str(i % 10)

    async def collect() -> list[tuple[float, str]]:
        return [(time.monotonic(), s) async for s in paced(source(), 0.1)]

    out = asyncio.run(collect())
    assert "".join(s for _, s in out) == "012345678901"
    stamps = [t for t, _ in out]
    assert all(b - a >= 0.1 for a, b in zip(stamps[:-1], stamps[1:-1]))  # the last one excepted
    assert len(out) < 12  # joined, not one per item


def test_sampling_fields_and_tools_cross_grpc_as_generation_params() -> None:
    from google.protobuf import json_format

    from graph.entry.faces.grpc_graph import fields_of

    params = {
        "logit_bias": {"5": -100},
        "min_p": 0.1,
        "frequency_penalty": 0.5,
        "tools": {"tools": [{"name": "f", "parameters": {"type": "object", "properties": {"s": {"maxLength": 3}}}}]},
    }
    msg = json_format.ParseDict(
        {"original_sentence": "hi", "params": params}, inference_graph_pb2.GenerateScoreRequest()
    )
    got = GenerationParams.model_validate(fields_of(msg)["params"])
    assert got.logit_bias == {5: -100.0} and got.min_p == 0.1 and got.frequency_penalty == 0.5
    assert got.tools is not None and got.tools.tools[0].parameters["properties"]["s"]["maxLength"] == 3
