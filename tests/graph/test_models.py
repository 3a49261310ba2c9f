"""Model side: ModelRef resolution errors, embedded GGUF conversion, and both classifiers on real/tiny models."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch

from graph.config import ClassifierNode, ModelRef
from graph.errors import ConfigError
from graph.models.classifier import SequenceClassifier, ZeroShotEmbeddingClassifier
from graph.models.loading import load_causal_lm, load_classifier, resolve_model_dir

SMOL = "smollm2-135m-instruct"
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "i", "love", "hate", "this", "it", "is", "good", "bad"]


# --- resolve_model_dir -------------------------------------------------------------------------


def test_missing_path_names_it():
    with pytest.raises(ConfigError) as err:
        resolve_model_dir(ModelRef(path="no/such/model_dir"))
    assert "no/such/model_dir" in err.value.message and "does not exist" in err.value.message
    assert err.value.field == "model.path"


def test_path_without_config_json(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_model_dir(ModelRef(path=str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_dir(ModelRef(path=str(tmp_path))) == str(tmp_path)


def test_bentoml_tag_needs_a_store_lookup(tmp_path):
    with pytest.raises(ConfigError, match="store_lookup"):
        resolve_model_dir(ModelRef(bentoml="gpt2:latest"))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_dir(ModelRef(bentoml="x:1"), store_lookup=lambda tag: str(tmp_path)) == str(tmp_path)


def test_unknown_embedded_lists_known_names():
    with pytest.raises(ConfigError) as err:
        resolve_model_dir(ModelRef(embedded="gpt-17"))
    assert "gpt-17" in err.value.message and SMOL in err.value.message


def test_hub_unreachable_fails_fast_and_suggests_offline_models(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ref = ModelRef(hub="someone/not-cached-model")
    assert resolve_model_dir(ref) == "someone/not-cached-model"
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_causal_lm(ref)
    assert time.perf_counter() - start < 5
    assert "someone/not-cached-model" in err.value.message
    assert "hub could not be reached" in err.value.message and "embedded" in err.value.message


def test_folder_model_is_used_in_place():
    path = Path(resolve_model_dir(ModelRef(embedded="all-minilm-l6-v2")))
    assert (path / "model.safetensors").is_file() and path.name == "model"


# --- classifiers --------------------------------------------------------------------------------


def _minilm_node(**kw) -> ClassifierNode:
    labels = {"positive": "This is positive, good and happy.", "negative": "This is negative, bad and sad."}
    return ClassifierNode(
        model=ModelRef(embedded="all-minilm-l6-v2"), mode="zero_shot", labels=labels, score_label="positive", **kw
    )


def test_zero_shot_minilm_separates_sentiment():
    clf = load_classifier(_minilm_node())
    assert isinstance(clf, ZeroShotEmbeddingClassifier)
    pos, neg = clf.classify(["I love this, it is wonderful", "This is terrible and sad"])
    assert pos.label == "positive" and neg.label == "negative"
    assert pos.score > 0.5 > neg.score
    for item in (pos, neg):
        assert set(item.labels) == {"positive", "negative"}
        assert sum(item.labels.values()) == pytest.approx(1.0, abs=1e-5)
        assert item.score == item.labels["positive"]
    assert clf.classify([]) == []


def test_zero_shot_batches_are_deterministic():
    texts = ["good", "bad day", "a long neutral sentence " * 80, "I am happy"]
    one_by_one = load_classifier(_minilm_node(max_batch_size=1, max_length=32)).classify(texts)
    together = load_classifier(_minilm_node(max_batch_size=64, max_length=32)).classify(texts)
    for a, b in zip(one_by_one, together):
        assert a.label == b.label and a.score == pytest.approx(b.score, abs=1e-5)


def _tiny_bert(tmp_path: Path, *, with_head: bool) -> Path:
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    model = BertForSequenceClassification(config) if with_head else BertModel(config)
    model.save_pretrained(tmp_path)
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(tmp_path)
    return tmp_path


def test_untrained_head_logs_warning(tmp_path, caplog):
    path = _tiny_bert(tmp_path, with_head=False)
    node = ClassifierNode(model=ModelRef(path=str(path)), mode="sequence_classification", score_label="POSITIVE")
    with caplog.at_level(logging.WARNING, logger="graph.models.classifier"):
        clf = load_classifier(node)
    assert isinstance(clf, SequenceClassifier)
    warnings = [r for r in caplog.records if r.name == "graph.models.classifier" and r.levelno == logging.WARNING]
    assert warnings and "meaningless" in warnings[0].getMessage() and str(path) in warnings[0].getMessage()
    (item,) = clf.classify(["i love this"])
    assert set(item.labels) == {"NEGATIVE", "POSITIVE"} and 0.0 <= item.score <= 1.0
    assert sum(item.labels.values()) == pytest.approx(1.0, abs=1e-5)


def test_trained_head_loads_quietly_and_checks_score_label(tmp_path, caplog):
    path = _tiny_bert(tmp_path, with_head=True)
    with caplog.at_level(logging.WARNING, logger="graph.models.classifier"):
        clf = SequenceClassifier.from_pretrained(str(path), score_label="POSITIVE", max_batch_size=2)
    assert not [r for r in caplog.records if r.name == "graph.models.classifier"]
    results = clf.classify(["i love this", "i hate it", "good", "bad"])
    assert len(results) == 4 and all(r.score == r.labels["POSITIVE"] for r in results)
    with pytest.raises(ConfigError, match="NEGATIVE"):
        SequenceClassifier.from_pretrained(str(path), score_label="positive")


@pytest.mark.parametrize("runtime", [{"dtype": "bfloat16"}, {"quantize": "int8"}])
def test_runtime_options_load_and_generate(tiny_dir, runtime):
    import asyncio

    import torch

    from graph.config import ModelRef, RuntimeConfig
    from graph.engine import GenerationEngine
    from graph.models.loading import load_causal_lm
    from graph.params import GenerationParams

    rt = RuntimeConfig(**runtime)
    model, tok = load_causal_lm(ModelRef(path=str(tiny_dir / "causal_lm")), rt)
    if rt.dtype == "bfloat16":
        assert next(model.parameters()).dtype == torch.bfloat16
    else:
        assert any("quantized" in type(m).__module__ for m in model.modules())
    engine = GenerationEngine(model, tok, name="t")
    engine.warmup()
    try:
        (res,) = asyncio.run(engine.generate("The cat", GenerationParams(max_new_tokens=5)))
    finally:
        engine.close()
    assert res.completion_tokens >= 1 and res.finish_reason in ("stop", "length")


def test_int8_needs_float32():
    from graph.config import RuntimeConfig

    with pytest.raises(ValueError, match="int8 needs dtype float32"):
        RuntimeConfig(quantize="int8", dtype="bfloat16")
    assert RuntimeConfig(quantize="int8", dtype="auto").dtype == "auto"  # resolves to float32


def test_native_dtype_reads_cpu_flags(tmp_path):
    from graph.models.loading import native_dtype

    amx = tmp_path / "amx"
    amx.write_text("processor : 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    plain = tmp_path / "plain"
    plain.write_text("processor : 0\nflags\t\t: fpu avx2 fma\n")
    assert native_dtype(str(amx)) == "bfloat16"
    assert native_dtype(str(plain)) == "float32"
    assert native_dtype(str(tmp_path / "missing")) == "float32"
