"""Fine-tuning on a tiny model: input checks, encoding with control prefixes, unlikelihood loss, a run, resume."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from graph.config import ModelRef, load_config
from graph.errors import ConfigError
from graph.training.config import parse_ref, parse_train_config
from graph.training.dataset import IGNORE, DocumentDataset, DocumentEncoder
from graph.training.documents import Document, read_documents
from graph.training.losses import unlikelihood_loss

CAT = {"meta": "cat", "body": "The cat sat on the mat."}
DOG = {"meta": "dog", "body": "The dog ran in the park."}
PREFIX = "<meta>{}</meta>\n"


def write_docs(path: Path, docs: list) -> Path:
    path.write_text("".join((d if isinstance(d, str) else json.dumps(d)) + "\n" for d in docs))
    return path


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("docs")
    return {
        "train": write_docs(d / "train.documents", [CAT, DOG] * 20),
        "valid": write_docs(d / "valid.documents", [DOG, CAT, CAT, DOG]),
    }


def tiny_args(tiny_dir: Path, docs: dict[str, Path], out: Path, **over) -> dict:
    return {
        "base": f"path:{tiny_dir / 'causal_lm'}",
        "train_file": str(docs["train"]),
        "valid_file": str(docs["valid"]),
        "output_dir": str(out),
        "max_steps": 30,
        "learning_rate": 1e-2,
        "warmup_steps": 3,
        "batch_size": 8,
        "eval_steps": 15,
        "save_steps": 15,
        "ignore_meta_prob": 0.0,
        "progress": False,
        "samples": {"max_new_tokens": 12},
        **over,
    }


# --- bad input stops before any training, naming the line or the argument ----------------------


@pytest.mark.parametrize(
    "line, why",
    [
        ('{"body": "ok", "meta": "x"', "not valid JSON"),
        ('["body"]', "expected a JSON object"),
        ('{"meta": "x"}', '"body" must be a non-empty string'),
        ('{"body": "  "}', '"body" must be a non-empty string'),
        ('{"body": "ok", "meta": 3}', '"meta" must be a string'),
        ('{"body": "ok", "title": "x"}', "unknown key(s) ['title']"),
    ],
)
def test_bad_line_is_named_by_file_and_number(tmp_path, line, why):
    path = write_docs(tmp_path / "d.documents", [CAT, "", line, DOG])
    with pytest.raises(ConfigError) as err:
        read_documents(path, what="train_file")
    assert f"{path}:3: " in err.value.message and why in err.value.message
    assert err.value.field == "train_file"


def test_documents_read_with_sha256(tmp_path):
    path = write_docs(tmp_path / "d.documents", [CAT, {"body": "no meta"}, {"body": "x", "meta": " "}])
    got = read_documents(path)
    assert got.documents == [Document("The cat sat on the mat.", "cat"), Document("no meta"), Document("x")]
    import hashlib

    assert got.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ConfigError, match="holds no documents"):
        read_documents(write_docs(tmp_path / "e.documents", [""]))


def test_missing_file_and_bad_values_name_the_flag(tmp_path, docs):
    args = {
        "base": "path:x",
        "train_file": str(docs["train"]),
        "valid_file": str(tmp_path / "nope.documents"),
        "output_dir": str(tmp_path / "run"),
    }
    with pytest.raises(ConfigError) as err:
        parse_train_config(args, flags=True)
    assert "--valid-file: file not found" in err.value.message and "nope.documents" in err.value.message
    with pytest.raises(ConfigError) as err:
        parse_train_config(
            {**args, "valid_file": str(docs["valid"]), "learning_rate": -1, "samples": {"top_p": 2}, "lr": 1},
            flags=True,
        )
    msg = err.value.message
    assert "--learning-rate: Input should be greater than 0" in msg
    assert "--sample-top-p: Input should be less than or equal to 1" in msg and "--lr: unknown argument" in msg
    with pytest.raises(ConfigError, match="control_format: .*exactly once"):
        parse_train_config({**args, "valid_file": str(docs["valid"]), "control_format": "no placeholder"})


def test_base_references():
    assert parse_ref("embedded:smollm2-135m-instruct") == ModelRef(embedded="smollm2-135m-instruct")
    assert parse_ref("bentoml:fables:latest") == ModelRef(bentoml="fables:latest")
    assert parse_ref("hub:openai-community/gpt2") == ModelRef(hub="openai-community/gpt2")
    with pytest.raises(ValueError, match="embedded:..."):
        parse_ref("gpt2")


def test_unknown_base_model_stops_before_loading(tmp_path, docs, tiny_dir, monkeypatch):
    import graph.models.loading as loading
    from graph.training.run import check_inputs, train

    monkeypatch.setattr(loading, "load_causal_lm", lambda *a, **k: pytest.fail("model loaded"))
    for base, words in [
        ("embedded:gpt-17", ["gpt-17", "smollm2-135m-instruct"]),
        (f"path:{tmp_path / 'nowhere'}", ["does not exist"]),
        ("bentoml:fables:latest", ["store_lookup"]),
    ]:
        cfg = parse_train_config(tiny_args(tiny_dir, docs, tmp_path / "run", base=base))
        with pytest.raises(ConfigError) as err:
            train(cfg)
        assert err.value.field == "base" and err.value.message.startswith("base: ")
        assert all(w in err.value.message for w in words), err.value.message
    bad = write_docs(tmp_path / "bad.documents", [CAT, "{oops"])
    with pytest.raises(ConfigError, match=r"bad.documents:2: not valid JSON"):
        check_inputs(parse_train_config(tiny_args(tiny_dir, docs, tmp_path / "run", valid_file=str(bad))))
    assert not (tmp_path / "run").exists()


def test_cli_reports_the_bad_line(tmp_path, docs, tiny_dir, capsys):
    from scripts.train import main

    bad = write_docs(tmp_path / "bad.documents", [CAT, DOG, '{"body": 1}'])
    code = main(
        [
            "--base",
            f"path:{tiny_dir / 'causal_lm'}",
            "--train-file",
            str(bad),
            "--valid-file",
            str(docs["valid"]),
            "--output-dir",
            str(tmp_path / "run"),
            "--no-store",
        ]
    )
    assert code == 2
    assert f'error: {bad}:3: "body" must be a non-empty string' in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "none.yaml")]) == 2
    assert "--config: file not found" in capsys.readouterr().err


# --- encoding: the control prefix reaches the model ----------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir / "causal_lm")


def test_prefix_goes_in_front_of_the_body_and_out_of_the_loss(tokenizer):
    enc = DocumentEncoder(tokenizer, control_prefix=PREFIX.format, max_meta_len=16, max_body_len=4)
    e = enc.encode(Document("The cat sat on the mat and more words.", "cat"))
    prefix = tokenizer(PREFIX.format("cat"))["input_ids"]  # what the engine makes of that prompt
    ex = e.example(with_meta=True)
    assert ex["input_ids"][: len(prefix)] == prefix and enc.prompt("cat") == PREFIX.format("cat")
    assert ex["labels"][: len(prefix)] == [IGNORE] * len(prefix)
    assert len(e.body) == 4 + 1 and e.body[-1] == tokenizer.eos_token_id  # capped body + end of sequence
    assert ex["labels"][len(prefix) :] == e.body
    bare = e.example(with_meta=False)
    assert bare["input_ids"] == e.bare + e.body and "meta" not in tokenizer.decode(bare["input_ids"])


def test_meta_is_capped_in_tokens(tokenizer):
    enc = DocumentEncoder(tokenizer, control_prefix=PREFIX.format, max_meta_len=2, max_body_len=8)
    long_meta = "the quick brown fox jumps over the lazy dog"
    assert len(tokenizer(enc.meta_text(long_meta), add_special_tokens=False)["input_ids"]) <= 2
    assert enc.encode(Document("x", long_meta)).meta == enc.meta_text(long_meta)
    off = DocumentEncoder(tokenizer, control_prefix=PREFIX.format, max_meta_len=0, max_body_len=8)
    assert off.encode(Document("x", "cat")).meta is None and off.prompt("cat") == ""


def test_ignore_meta_prob(tokenizer):
    enc = DocumentEncoder(tokenizer, control_prefix=PREFIX.format, max_meta_len=8, max_body_len=8)
    encoded = [enc.encode(Document("The cat.", "cat"))] * 400
    with_meta = lambda ds: sum(ds[i]["labels"][0] == IGNORE for i in range(len(ds)))  # noqa: E731
    assert with_meta(DocumentDataset(encoded, ignore_meta_prob=0.0, seed=0, fixed=False)) == 400
    assert with_meta(DocumentDataset(encoded, ignore_meta_prob=1.0, seed=0, fixed=False)) == 0
    half = DocumentDataset(encoded, ignore_meta_prob=0.5, seed=0, fixed=False)
    assert 120 < with_meta(half) < 280
    fixed = DocumentDataset(encoded, ignore_meta_prob=0.5, seed=0, fixed=True)
    assert [fixed[i] for i in range(400)] == [fixed[i] for i in range(400)]  # validation: same every time


# --- unlikelihood loss -------------------------------------------------------------------------------


def test_unlikelihood_counts_distinct_earlier_tokens():
    vocab = 10
    logits = torch.zeros(1, 6, vocab)  # uniform: p = 0.1 for every token
    labels = torch.tensor([[IGNORE, 3, 4, 3, 5, 3]])
    # targets 3,4,3,5,3 -> candidates: {} , {3}, {4}, {3,4}, {4,5}: 6 candidates over 5 targets
    got = unlikelihood_loss(logits, labels)
    assert got.item() == pytest.approx(6 * -math.log(0.9) / 5, rel=1e-5)
    assert unlikelihood_loss(logits, labels, num_items=10).item() == pytest.approx(6 * -math.log(0.9) / 10, rel=1e-5)
    padded = torch.tensor([[IGNORE, 3, 4, 3, IGNORE, IGNORE]])
    assert unlikelihood_loss(logits, padded).item() == pytest.approx(2 * -math.log(0.9) / 3, rel=1e-5)


def test_unlikelihood_pushes_repeats_down():
    logits = torch.zeros(1, 4, 5, requires_grad=True)
    unlikelihood_loss(logits, torch.tensor([[0, 1, 2, 3]])).backward()
    # position 2 predicts target 3 with candidates {1, 2}: their logits get a positive gradient
    assert logits.grad[0, 2, 1] > 0 and logits.grad[0, 2, 2] > 0 and logits.grad[0, 2, 3] < 0


# --- a real (tiny) run -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tiny_dir, docs, tmp_path_factory):
    from graph.training.run import train

    out = tmp_path_factory.mktemp("train") / "run"
    cfg = parse_train_config(tiny_args(tiny_dir, docs, out, unlikelihood_alpha=0.5))
    return cfg, train(cfg)


def greedy(model_dir: str, prompt: str, tokens: int = 8) -> str:
    from graph.models.loading import load_causal_lm
    from graph.training.config import SampleParams
    from graph.training.samples import generate_samples

    model, tok = load_causal_lm(ModelRef(path=model_dir))
    return generate_samples(model, tok, [prompt], SampleParams(do_sample=False, max_new_tokens=tokens))[0]


def test_validation_loss_falls_and_is_logged(run):
    cfg, result = run
    assert result.steps == 30 and result.final_eval_loss < result.initial_eval_loss / 4
    assert result.final_perplexity == pytest.approx(math.exp(result.final_eval_loss))
    out = cfg.path("output_dir")
    records = [json.loads(ln) for ln in (out / "generated.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records] == [0, 15, 30]
    assert records[0]["eval_loss"] == pytest.approx(result.initial_eval_loss)
    assert records[-1]["eval_perplexity"] == pytest.approx(math.exp(records[-1]["eval_loss"]))
    assert records[0]["generator_params"]["temperature"] == cfg.samples.temperature
    assert [s["prompt"] for s in records[-1]["samples"]] == [PREFIX.format("dog"), PREFIX.format("cat"), ""]
    assert list((out / "tb").glob("events.out.tfevents.*")), "no TensorBoard log"
    meta = json.loads((out / "result.json").read_text())
    assert meta["base_model"].startswith("path:") and meta["train_sha256"] == read_documents(cfg.train_file).sha256
    assert meta["args"]["unlikelihood_alpha"] == 0.5


def test_control_code_steers_generation(run, tiny_dir):
    _, result = run
    assert greedy(result.final_dir, PREFIX.format("cat")).startswith("The cat sat on the mat.")
    assert greedy(result.final_dir, PREFIX.format("dog")).startswith("The dog ran in the park.")
    before = greedy(str(tiny_dir / "causal_lm"), PREFIX.format("cat"))
    assert not before.startswith("The cat")


def test_resume_continues_the_step_count(run, tmp_path, docs, tiny_dir):
    from graph.training.run import train

    cfg, _ = run
    out = tmp_path / "run"
    shutil.copytree(cfg.path("output_dir") / "checkpoint-15", out / "checkpoint-15")
    fresh = parse_train_config(tiny_args(tiny_dir, docs, out))
    with pytest.raises(ConfigError, match="already holds checkpoint-15"):
        train(fresh)
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(parse_train_config(tiny_args(tiny_dir, docs, tmp_path / "other", resume=True)))
    result = train(parse_train_config(tiny_args(tiny_dir, docs, out, resume=True)))
    assert result.resumed_from.endswith("checkpoint-15") and result.steps == 30
    steps = [json.loads(ln)["global_step"] for ln in (out / "generated.jsonl").read_text().splitlines()]
    assert steps == [15, 30]  # evaluated where it resumed, then at 30: no step 0 again
    state = json.loads((out / "checkpoint-30" / "trainer_state.json").read_text())
    losses = [e["step"] for e in state["log_history"] if "loss" in e]
    assert losses[0] <= 15 < losses[-1] and losses == sorted(losses)  # history of both parts, one count
    assert result.final_eval_loss < result.initial_eval_loss  # initial = the first run's step-0 evaluation


def test_finetuned_config_parses():
    cfg = load_config("configs/finetuned.yaml")
    assert any(node.model.bentoml for node in cfg.generators.values())
