"""The request context (graph/entry/context.py): request ids, the token account, the deadline."""

from __future__ import annotations

import time

from graph.entry.auth import Caller
from graph.entry.context import RequestContext, new_request_id, request_id_from


def test_a_callers_request_id_is_kept_only_when_sane() -> None:
    assert request_id_from("my-req_1.2:x@y/z+=") == "my-req_1.2:x@y/z+="
    for bad in (None, "", "has space", "tab\there", "x" * 129, "é"):
        rid = request_id_from(bad)
        assert rid != bad and len(rid) == 16 and int(rid, 16) >= 0
    assert new_request_id() != new_request_id()


def test_the_account_charges_the_callers_key_and_parts_share_it() -> None:
    charged: list[tuple[str | None, int]] = []

    class Meter:
        def charge(self, caller: Caller, tokens: int) -> None:
            charged.append((caller.key_id, tokens))

    ctx = RequestContext.make(timeout_s=10, request_id="r1").by(Caller(key_id="alice"), Meter())
    part = ctx.part("0")
    ctx.charge(5)
    part.charge(7)
    part.charge(0)  # nothing generated: nothing charged
    assert part.request_id == "r1-0" and ctx.account.tokens == 12 and charged == [("alice", 5), ("alice", 7)]
    assert ctx.asking(400).deadline_ms == 400 and ctx.asking(None) is ctx


def test_the_deadline_counts_down() -> None:
    ctx = RequestContext.make(timeout_s=0.05)
    assert 0 < ctx.left_s() <= 0.05
    time.sleep(0.06)
    assert ctx.left_s() == 0.0
