"""The OpenAI sampling fields in the sampler: logit_bias, frequency and presence penalties, min_p."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from graph.engine.sampling import BatchSampler, RowSampling
from graph.params import GenerationParams as GP

VOCAB = 10


def scores(*pairs: tuple[int, float]) -> torch.Tensor:
    row = torch.zeros(1, VOCAB)
    for token, value in pairs:
        row[0, token] = value
    return row


def greedy(params: GP, logits: torch.Tensor, generated: list[int] = ()) -> int:  # pyright: ignore[reportArgumentType]
    row = RowSampling(params, None, list(generated), generated=list(generated))
    return BatchSampler([row], VOCAB).step(logits.clone()).tokens[0]


def test_logit_bias_bans_and_forces() -> None:
    logits = scores((3, 5.0), (4, 4.0))
    assert greedy(GP(), logits) == 3
    assert greedy(GP(logit_bias={3: -100}), logits) == 4  # banned: the next best
    assert greedy(GP(logit_bias={7: 100}), logits) == 7  # forced
    # sampled too: a banned token is never drawn
    row = RowSampling(GP(do_sample=True, seed=1, logit_bias={3: -100}), torch.Generator().manual_seed(1), [])
    sampler = BatchSampler([row], VOCAB)
    assert all(sampler.step(scores((3, 50.0))).tokens[0] != 3 for _ in range(50))


def test_frequency_penalty_counts_each_time_presence_once() -> None:
    logits = scores((3, 5.0), (4, 3.5))
    assert greedy(GP(frequency_penalty=1.0), logits, [3]) == 3  # 5 - 1 > 3.5
    assert greedy(GP(frequency_penalty=1.0), logits, [3, 3]) == 4  # 5 - 2 < 3.5
    assert greedy(GP(presence_penalty=1.0), logits, [3, 3, 3]) == 3  # 5 - 1, however often
    assert greedy(GP(presence_penalty=2.0), logits, [3]) == 4
    assert greedy(GP(frequency_penalty=-2.0), scores((3, 1.0), (4, 5.0)), [3, 3]) == 3  # negative: encourages
    # the prompt does not count (only the completion), and each step's token joins the count
    row = RowSampling(GP(frequency_penalty=0.8), None, [3, 3, 3], generated=[])
    sampler = BatchSampler([row], VOCAB)
    assert [sampler.step(logits.clone()).tokens[0] for _ in range(3)] == [3, 3, 4]


def test_penalties_are_per_row_in_one_batch() -> None:
    logits = scores((3, 5.0), (4, 3.5)).repeat(2, 1)
    rows = [
        RowSampling(GP(), None, [3], generated=[3, 3]),
        RowSampling(GP(frequency_penalty=1.0), None, [3], generated=[3, 3]),
    ]
    assert BatchSampler(rows, VOCAB).step(logits).tokens == [3, 4]


def test_min_p_drops_tokens_below_its_share_of_the_best() -> None:
    # probabilities ~ 0.5, 0.3, 0.2 at temperature 1: min_p 0.5 keeps the first two only
    logits = torch.full((1, VOCAB), float("-inf"))
    logits[0, :3] = torch.tensor([0.5, 0.3, 0.2]).log()
    drawn = set()
    for seed in range(200):
        row = RowSampling(GP(do_sample=True, min_p=0.5, seed=seed), torch.Generator().manual_seed(seed), [])
        drawn.add(BatchSampler([row], VOCAB).step(logits.clone()).tokens[0])
    assert drawn == {0, 1}
    free = set()
    for seed in range(200):
        row = RowSampling(GP(do_sample=True, seed=seed), torch.Generator().manual_seed(seed), [])
        free.add(BatchSampler([row], VOCAB).step(logits.clone()).tokens[0])
    assert free == {0, 1, 2}


@pytest.mark.parametrize(
    "field, value",
    [("min_p", 1.5), ("frequency_penalty", 2.5), ("presence_penalty", -3.0), ("logit_bias", {1: 101.0})],
)
def test_out_of_range_is_refused(field, value) -> None:
    with pytest.raises(ValidationError, match=field):
        GP.model_validate({field: value})
