"""The hybrid node's small parts without models: the FIFO step lock and the compute thread (graph/engine/)."""

from __future__ import annotations

import threading
import time

import pytest

from graph.engine.hybrid import TurnLock
from graph.engine.runners.pinned_runner import ComputeThread


def test_turn_lock_serves_threads_in_the_order_they_asked():
    """A thread that releases and asks again waits behind those already waiting (two busy decode threads
    alternate); a plain lock would let it take the lock straight back."""
    lock = TurnLock()
    order: list[str] = []
    lock.__enter__()  # held by this thread while the others queue up

    def worker(name: str) -> None:
        for _ in range(3):
            with lock:
                order.append(name)
                time.sleep(0.002)

    a = threading.Thread(target=worker, args=("a",))
    a.start()
    time.sleep(0.05)  # a waits first
    b = threading.Thread(target=worker, args=("b",))
    b.start()
    time.sleep(0.05)
    lock.__exit__(None, None, None)
    a.join(5)
    b.join(5)
    assert order == ["a", "b", "a", "b", "a", "b"]


def test_turn_lock_excludes():
    lock = TurnLock()
    inside = 0
    most = 0

    def worker() -> None:
        nonlocal inside, most
        for _ in range(50):
            with lock:
                inside += 1
                most = max(most, inside)
                time.sleep(0.0001)
                inside -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most == 1


def test_compute_thread_runs_calls_on_its_own_thread_and_hands_back_errors():
    compute = ComputeThread(1, name="compute-test")
    try:
        caller = threading.current_thread().name
        assert compute.call(lambda: threading.current_thread().name) == "compute-test" != caller
        assert compute.call(lambda: compute.call(lambda: 7)) == 7  # a call from the thread itself runs inline
        with pytest.raises(ZeroDivisionError):
            compute.call(lambda: 1 / 0)
        assert compute.call(lambda: 2 + 2) == 4  # and it goes on
    finally:
        compute.close()


def test_compute_thread_runs_torch_in_inference_mode_with_its_threads():
    import torch

    compute = ComputeThread(1)
    try:
        assert compute.call(torch.is_inference_mode_enabled)
        assert compute.call(torch.get_num_threads) == 1
    finally:
        compute.close()
