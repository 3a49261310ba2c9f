"""The int8 ONNX conversion shares its tied embedding with the vocabulary projection (graph/models/onnx_model.py,
share_embedding): no float32 table is left, the token lookup reads the lm_head's int8 weights through
GatherBlockQuantized, the rows it gives are the source model's float32 embedding rows within one quantization
step, and the converted model still generates. Real builder conversion of the tiny tied llama (16-dim heads,
hidden 32 = one 32-wide block per row), kept under artifacts/onnx/ like the fp32 one.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graph.params import GenerationParams as GP


@pytest.fixture(scope="module")
def onnx_source(tiny_dir):
    from tests.tiny_models import build_onnx_source

    return build_onnx_source(tiny_dir)


@pytest.fixture(scope="module")
def int8_dir(onnx_source):
    from graph.models.onnx_model import DEFAULT_ONNX_CACHE, prepare_local

    return prepare_local(onnx_source, DEFAULT_ONNX_CACHE, precision="int8")


def test_int8_conversion_has_no_float32_table_and_gathers_the_lm_head_weights(onnx_source, int8_dir: Path):
    import json

    from safetensors.numpy import load_file

    cfg = json.loads((onnx_source / "config.json").read_text())
    vocab, hidden = cfg["vocab_size"], cfg["hidden_size"]
    model = onnx.load(str(int8_dir / "model.onnx"), load_external_data=False)
    float_tables = [
        t.name
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and list(t.dims) == [vocab, hidden]
    ]
    assert float_tables == []
    gather = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/"))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gather.attribute}
    assert attrs["bits"] == 8 and attrs["block_size"] == 32 and gather.input[2] == head.input[2]
    assert not (int8_dir / "tokenizer.json").exists()  # the runner loads the source folder's

    # The lookup alone, run by ONNX Runtime: every token's row against the source's float32 table.
    import onnxruntime as ort

    full = onnx.load(str(int8_dir / "model.onnx"))
    g = full.graph
    producers = {out: n for n in g.node for out in n.output}
    nodes, todo = [], [gather]
    while todo:  # the lookup's own nodes (reshape of the weights, the gather), back to initializers and input_ids
        node = todo.pop()
        nodes.insert(0, node)
        todo += [producers[i] for i in node.input if i in producers]
    used = {i for n in nodes for i in n.input}
    lookup = onnx.helper.make_model(
        onnx.helper.make_graph(
            nodes,
            "lookup",
            [next(i for i in g.input if i.name == "input_ids")],
            [onnx.helper.make_tensor_value_info(gather.output[0], onnx.TensorProto.FLOAT, None)],
            [t for t in g.initializer if t.name in used],
        ),
        opset_imports=list(full.opset_import),
    )
    session = ort.InferenceSession(lookup.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = np.asarray(session.run(None, {"input_ids": np.arange(vocab, dtype=np.int64)[None, :]})[0])[0]
    scales = numpy_helper.to_array(next(t for t in g.initializer if t.name == head.input[2]))
    step = np.repeat(scales.reshape(vocab, -1), 32, axis=1)
    table = load_file(str(onnx_source / "model.safetensors"))["model.embed_tokens.weight"]
    assert rows.shape == table.shape
    assert np.all(np.abs(rows - table) <= np.abs(step) * 1.001 + 1e-7)
    assert np.abs(rows - table).mean() < np.abs(step).mean() * 0.5  # rounding, not an offset or another row


def test_int8_conversion_generates(onnx_source, int8_dir: Path):
    from transformers import AutoTokenizer

    from graph.engine import GenerationEngine
    from graph.engine.runners.onnx_runner import OnnxRunner

    tok = AutoTokenizer.from_pretrained(onnx_source)
    tok.padding_side = "left"
    runner = OnnxRunner(int8_dir, source_dir=onnx_source, precision="int8", threads=1)
    engine = GenerationEngine(runner, tok, name="onnx-int8", max_batch_size=4)
    engine.start()
    try:
        out = asyncio.run(engine.generate("Once upon a time", GP(max_new_tokens=8)))
        assert 1 <= out[0].completion_tokens <= 8
    finally:
        engine.close()


def test_untied_or_float_model_is_left_alone(onnx_source, tmp_path: Path):
    """fp32 has no quantized lm_head to share: the conversion keeps its float32 table, bytes unchanged."""
    from graph.models.onnx_model import DEFAULT_ONNX_CACHE, prepare_local, share_embedding

    fp32 = prepare_local(onnx_source, DEFAULT_ONNX_CACHE, precision="fp32")
    copy = tmp_path / "fp32"
    shutil.copytree(fp32, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    assert share_embedding(copy / "model.onnx").startswith("embedding not shared")
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before
