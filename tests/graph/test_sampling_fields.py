"""The sampling fields through the engine on a tiny model: each changes what is generated."""

from __future__ import annotations

import asyncio

import pytest

from graph.errors import InvalidRequest
from graph.params import GenerationParams as GP
from tests.graph.test_engine import make_engine


@pytest.fixture(scope="module")
def engine(tiny_dir):
    eng = make_engine(tiny_dir / "causal_lm")
    yield eng
    eng.close()


def text(engine, params: GP) -> str:
    return asyncio.run(engine.generate("The cat sat on", params))[0].text


def test_frequency_and_presence_penalties_change_greedy_output(engine) -> None:
    plain = text(engine, GP(max_new_tokens=24))
    assert text(engine, GP(max_new_tokens=24, frequency_penalty=2.0)) != plain
    assert text(engine, GP(max_new_tokens=24, presence_penalty=2.0)) != plain


def test_logit_bias_forces_and_bans(engine) -> None:
    dog, cat = (engine.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" dog", " cat"))
    word = engine.tokenizer.decode
    assert text(engine, GP(max_new_tokens=3, logit_bias={dog: 100.0})) == word([dog] * 3)
    assert text(engine, GP(max_new_tokens=1, logit_bias={dog: 100.0, cat: 99.0})) == word([dog])
    assert text(engine, GP(max_new_tokens=1, logit_bias={dog: -100.0, cat: 99.0})) == word([cat])


def test_a_bias_on_a_token_the_model_lacks_is_a_400(engine) -> None:
    with pytest.raises(InvalidRequest, match="logit_bias: token id 99999999"):
        asyncio.run(engine.generate("Hi", GP(logit_bias={99999999: 1.0})))


def test_min_p_one_is_greedy(engine) -> None:
    greedy = text(engine, GP(max_new_tokens=16))
    assert text(engine, GP(max_new_tokens=16, do_sample=True, temperature=1.0, min_p=1.0, seed=3)) == greedy
