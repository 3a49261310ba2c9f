"""Train a tiny generator, save it to the BentoML store, serve a config naming {bentoml: <name>:latest}."""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid

import httpx
import pytest
import yaml

from tests.server import BENTOML, Server

CAT = {"meta": "cat", "body": "The cat sat on the mat."}
DOG = {"meta": "dog", "body": "The dog ran in the park."}


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """(model-store tag, name, train file) of a tiny model fine-tuned by scripts/train.py; deleted afterwards."""
    import bentoml

    from scripts.train import main

    d = tmp_path_factory.mktemp("finetune")
    train = d / "train.documents"
    train.write_text("".join(json.dumps(x) + "\n" for x in [CAT, DOG] * 20))
    valid = d / "valid.documents"
    valid.write_text(json.dumps(DOG) + "\n" + json.dumps(CAT) + "\n")
    name = f"test-finetuned-{uuid.uuid4().hex[:8]}"  # unique: the store is shared
    code = main(
        [
            "--base",
            f"path:{tiny_dir / 'causal_lm'}",
            "--train-file",
            str(train),
            "--valid-file",
            str(valid),
            "--output-dir",
            str(d / "run"),
            "--name",
            name,
            "--max-steps",
            "40",
            "--learning-rate",
            "1e-2",
            "--warmup-steps",
            "4",
            "--batch-size",
            "8",
            "--eval-steps",
            "20",
            "--save-steps",
            "20",
            "--ignore-meta-prob",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    tag = str(bentoml.models.get(f"{name}:latest").tag)
    yield tag, name, train
    bentoml.models.delete(tag)


def test_model_lands_in_the_store_with_its_metadata(trained):
    import bentoml

    tag, name, train = trained
    info = bentoml.models.get(tag).info
    assert info.labels["source"] == "finetuned"
    meta = info.metadata
    assert meta["base_model"].startswith("path:") and meta["base_model"].endswith("causal_lm")
    assert meta["train_sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()
    assert meta["steps"] == 40 and meta["final_eval_loss"] < meta["initial_eval_loss"]
    assert meta["final_perplexity"] > 0 and meta["args"]["learning_rate"] == 0.01
    listed = subprocess.run(
        [str(BENTOML), "models", "list", name, "-o", "json"], capture_output=True, text=True, check=True
    )
    assert [m["tag"] for m in json.loads(listed.stdout)] == [tag]


def test_served_config_answers_with_the_finetuned_model(trained, tiny_dir, tmp_path):
    tag, name, _ = trained
    cfg = yaml.safe_load(open("configs/tiny.yaml"))
    cfg["name"] = "finetuned_tiny"
    cfg.pop("policies", None)  # its named graphs use tiny_b, which this graph does not have
    cfg["generators"] = {
        "tiny_ft": {"model": {"bentoml": f"{name}:latest"}, "defaults": {"max_new_tokens": 8}},
        "tiny_a": cfg["generators"]["tiny_a"],
    }
    path = tmp_path / "finetuned_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    params = {"do_sample": False, "max_new_tokens": 8}
    with Server(config=path, name="finetuned") as srv:
        for meta, expected in (("cat", "The cat sat on the mat."), ("dog", "The dog ran in the park.")):
            r = httpx.post(
                srv.url + "/generate",
                json={"prompt": f"<meta>{meta}</meta>\n", "model": "tiny_ft", "params": params},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            assert r.json()[0]["results"][0]["text"].startswith(expected)
        r = httpx.post(srv.url + "/generate", json={"prompt": "<meta>cat</meta>\n", "params": params}, timeout=60)
        assert {item["model"] for item in r.json()} == {"tiny_ft", "tiny_a"}  # served beside the others
    assert tag.startswith(name + ":")
