"""The llamacpp runner hands llama.cpp its rows in ascending sequence order, from the lowest free ids
(graph/engine/runners/llamacpp_runner.py: `_run`, `take_seq`).

With `kv_unified = false` llama.cpp splits a batch into one ubatch per run of consecutive sequence ids in
batch order (llama-batch.cpp, split_equal with `sequential`): a 64-row step whose sequences had come back
from `free_seqs` in another order ran as up to 64 forwards, 1.1-1.4 s against 0.28 s for Gemma 3 on 2
cores (docs/performance.md, the llamacpp runner's 64 streams). These tests watch the batches the runner
gives `llama_decode` on the tiny GGUF, and that the logits still land in each row's place.
"""

from __future__ import annotations

import pytest
import torch

from tests.graph.test_llamacpp_runtime import gguf_source, llamacpp_runner  # noqa: F401  gguf_source: used by `runner`

pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install`")


class DecodeSpy:
    """llama-cpp-python's module as the runner calls it, recording each batch's sequence ids (a spy: the
    real llama_decode runs)."""

    def __init__(self, real) -> None:
        self._real = real
        self.batches: list[list[int]] = []

    def __getattr__(self, name: str):
        return getattr(self._real, name)

    def llama_decode(self, ctx, batch):
        self.batches.append([batch.seq_id[j][0] for j in range(batch.n_tokens)])
        return self._real.llama_decode(ctx, batch)


@pytest.fixture
def runner(request):
    r = llamacpp_runner(request.getfixturevalue("gguf_source"), n_seq=9, n_ctx_seq=256)
    yield r
    r.close()


def prefill(runner, prompts: list[list[int]]):
    p = max(len(x) for x in prompts)
    ids = torch.zeros(len(prompts), p, dtype=torch.long)
    mask = torch.zeros(len(prompts), p, dtype=torch.bool)
    for i, x in enumerate(prompts):
        ids[i, p - len(x) :] = torch.tensor(x)
        mask[i, p - len(x) :] = True
    return runner.prefill(ids, mask)


PROMPTS = [[1, 5, 9, 13, 17], [1, 22, 7], [1, 30, 31, 32, 33, 34], [1, 11, 12, 40]]


def test_freed_sequences_come_back_lowest_first(runner) -> None:
    taken = [runner.take_seq() for _ in range(6)]
    assert taken == [0, 1, 2, 3, 4, 5]
    runner.free_seqs([4, 1, 3])
    assert [runner.take_seq() for _ in range(3)] == [1, 3, 4]
    runner.free_seqs(taken)


def test_rows_reach_llama_decode_in_ascending_sequence_order(runner) -> None:
    """Rows whose sequences are in descending order (as freed sequences used to come back) are still one
    run of consecutive ids in the batch llama.cpp gets, and each row's logits are its own prompt's."""
    _, pre = prefill(runner, PROMPTS)
    order = [3, 2, 1, 0]  # rows in descending sequence order
    batch = runner.new_cache(len(PROMPTS), 64)
    batch.add_rows(pre, order, 8)
    assert batch.seqs == [3, 2, 1, 0]
    spy = DecodeSpy(runner._L)
    runner._L = spy
    try:
        ids = torch.tensor([[PROMPTS[i][-1]] for i in order])
        positions = torch.tensor([[len(PROMPTS[i])] for i in order])
        logits = runner.decode(ids, positions, batch, 8)
    finally:
        runner._L = spy._real
    assert spy.batches == [sorted(batch.seqs)]
    # each row's logits against that prompt alone, one more token on its own sequence
    for row, i in enumerate(order):
        solo_logits, solo = prefill(runner, [[*PROMPTS[i], PROMPTS[i][-1]]])
        assert torch.allclose(logits[row], solo_logits[0], atol=1e-3), f"row {row} (prompt {i})"
        solo.runner.free_seqs(solo.seqs)
        solo.seqs.clear()
