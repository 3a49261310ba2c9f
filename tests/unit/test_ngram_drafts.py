"""Prompt-lookup drafts (graph/engine/spec/ngram.py): the longest recent suffix match, incrementally indexed."""

from __future__ import annotations

import random

import pytest

from graph.engine.spec.ngram import NgramDrafter


def brute_force(tokens: list[int], max_n: int, min_n: int, k: int) -> list[int]:
    """The rule, spelled out: for n = max_n..min_n, the latest earlier occurrence of the last n tokens;
    the tokens that followed it (at most k, never past the end)."""
    size = len(tokens)
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        suffix = tokens[size - n :]
        for start in range(size - n - 1, -1, -1):
            if tokens[start : start + n] == suffix:
                end = start + n
                return tokens[end : min(end + k, size)]
    return []


def test_proposes_what_followed_the_longest_recent_match():
    d = NgramDrafter(max_n=3, k=4)
    tokens = [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3]
    # [1, 2, 3] occurred at the start (followed by 4 5 9 2); [2, 3] later, but the longer match wins.
    assert d.propose(tokens) == [4, 5, 9, 2]


def test_shorter_ngram_when_no_longer_one_matches_and_latest_occurrence_first():
    d = NgramDrafter(max_n=3, k=2)
    assert d.propose([5, 6, 1, 7, 8, 1, 9, 4, 1]) == [9, 4]  # only "1" recurs; its latest occurrence


def test_nothing_to_propose():
    d = NgramDrafter(max_n=3, k=4)
    assert d.propose([1, 2, 3, 4]) == []
    assert d.propose([1, 2, 3, 4], k=0) == []
    assert NgramDrafter(max_n=3, k=4, min_n=2).propose([1, 2, 3, 1]) == []  # a 1-token match only


def test_drafts_stop_at_the_end_of_the_text():
    assert NgramDrafter(max_n=2, k=8).propose([7, 7, 7]) == [7]


def test_min_n_above_max_n_is_refused():
    with pytest.raises(ValueError, match="min_n"):
        NgramDrafter(max_n=2, k=4, min_n=3)


@pytest.mark.parametrize("seed", range(5))
def test_incremental_index_equals_the_brute_force_rule(seed):
    rng = random.Random(seed)
    max_n, min_n, k = rng.choice([(3, 1), (4, 2), (2, 2), (1, 1)]) + (rng.randint(1, 6),)
    d = NgramDrafter(max_n=max_n, k=k, min_n=min_n)
    tokens = [rng.randrange(6) for _ in range(rng.randint(1, 20))]
    for _ in range(150):  # the row grows by 1..k+1 tokens a step, as accepted drafts make it
        assert d.propose(tokens) == brute_force(tokens, max_n, min_n, k), tokens
        tokens += [rng.randrange(6) for _ in range(rng.randint(1, k + 1))]


def test_adaptive_draft_length_follows_acceptance():
    d = NgramDrafter(max_n=2, k=6, adaptive=True)
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2]
    assert len(d.propose(tokens)) == 6
    d.update(6, 2)  # a rejected draft: one fewer
    d.update(5, 0)
    assert d.budget == 4 and len(d.propose(tokens)) == 4
    d.update(4, 4)  # all accepted: two more, up to k
    assert d.budget == 6
    d.update(6, 6)
    assert d.budget == 6
    for _ in range(10):
        d.update(1, 0)
    assert d.budget == 1 and d.propose(tokens) == [3]  # never below one
    fixed = NgramDrafter(max_n=2, k=6)
    fixed.update(6, 0)
    assert len(fixed.propose(tokens)) == 6
