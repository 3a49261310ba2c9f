"""`runtime: {backend: hybrid}` (graph/engine/hybrid.py) on the tiny llama: routing, each side's own tokens, features.

The small side is llama.cpp on the tiny llama's GGUF file (tests/tiny_models.py:build_gguf_source), the large
side torch on the same folder's transformers weights. Routing is tested with crossovers given in the config
(deterministic); the measured crossover is tested for what it must be (a batch size the rule then uses), not
for a value, which depends on the machine. The torch backend's feature tests (stop strings, cancel, streams,
seeds, logprobs) and the structured-output tests run again on a hybrid node, once with every request on
each side.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from graph.config import HYBRID_HOLD_S, GeneratorNode, RuntimeConfig
from graph.params import GenerationParams as GP
from tests.graph import test_engine as te
from tests.graph import test_structured as ts

pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install`")
PROMPTS = te.PROMPTS
NEVER = 1000  # a crossover above max_batch_size: every request starts on the small side


@pytest.fixture(scope="session")
def gguf_source(tiny_dir):
    from tests.tiny_models import build_gguf_source

    return build_gguf_source(tiny_dir)


def node(gguf_source, runtime: dict | None = None, **kw) -> GeneratorNode:
    rt = {"backend": "hybrid", "threads": 2, "small": {"backend": "llamacpp"}, "large": {"backend": "torch"}}
    kw.setdefault("scheduler", {"max_batch_size": 16})
    kw.setdefault("max_new_tokens_limit", 1000)
    return GeneratorNode(model={"path": str(gguf_source)}, runtime={**rt, **(runtime or {})}, **kw)


def build(gguf_source, runtime: dict | None = None, **kw):
    from graph.models.node_engine import engine_for_node

    engine = engine_for_node("tiny", node(gguf_source, runtime, **kw))
    assert engine.warmup()
    return engine


def started_on(engine) -> dict[str, float]:
    s = engine.stats()
    return {"small": s["small_requests_total"], "large": s["large_requests_total"]}


def texts(engine, prompts, params) -> list[str]:
    async def together():
        return await asyncio.gather(*(engine.generate(p, params) for p in prompts))

    return [r[0].text for r in asyncio.run(together())]


# -- routing ---------------------------------------------------------------------------------------


def test_one_request_starts_small_and_a_burst_starts_large(gguf_source):
    """Crossover 4: a lone request starts on the small side; a burst of 8 sent at once is 8 node rows, past
    the crossover, so all of it starts on the large side; alone again, small (no hold here: see below)."""
    engine = build(gguf_source, {"crossover_rows": 4, "crossover_hold_s": 0})
    try:
        assert engine.crossover_rows == 4 and "crossover 4 rows, config" in engine.runtime_name
        asyncio.run(engine.generate(PROMPTS[0], GP(max_new_tokens=4)))
        assert started_on(engine) == {"small": 1, "large": 0}
        texts(engine, PROMPTS * 2, GP(max_new_tokens=8))
        assert started_on(engine) == {"small": 1, "large": 8}
        asyncio.run(engine.generate(PROMPTS[0], GP(max_new_tokens=4)))
        assert started_on(engine) == {"small": 2, "large": 8}
        assert engine.stats()["requests_total"] == 10
    finally:
        engine.close()


def test_after_a_burst_new_requests_start_large_for_the_hold(gguf_source):
    """Crossover 4, hold 2 s: once the node was at its crossover, a lone request sent right after the burst
    still starts on the large side (load that comes in waves stays there); after the hold, small again."""
    engine = build(gguf_source, {"crossover_rows": 4, "crossover_hold_s": 2.0})
    try:
        assert engine.stats()["hybrid_hold_s"] == 2.0
        asyncio.run(engine.generate(PROMPTS[0], GP(max_new_tokens=4)))
        assert started_on(engine) == {"small": 1, "large": 0}  # never at the crossover yet: no hold
        texts(engine, PROMPTS * 2, GP(max_new_tokens=8))
        asyncio.run(engine.generate(PROMPTS[0], GP(max_new_tokens=4)))
        assert started_on(engine) == {"small": 1, "large": 9}
        time.sleep(2.1)
        asyncio.run(engine.generate(PROMPTS[0], GP(max_new_tokens=4)))
        assert started_on(engine) == {"small": 2, "large": 9}
    finally:
        engine.close()


def staggered(engine, first: str, rest: list[str], params, lead: GP | None = None) -> list[str]:
    """`first` sent alone (with `lead` params, else `params`), the `rest` together once it is running (each
    group routed on its own)."""

    async def run():
        lead_task = asyncio.create_task(engine.generate(first, lead or params))
        while engine.stats()["active_rows"] == 0 and not lead_task.done():
            await asyncio.sleep(0.001)
        assert not lead_task.done(), "the first request must still run when the others are sent"
        others = await asyncio.gather(*(engine.generate(p, params) for p in rest))
        return [(await lead_task)[0].text, *(r[0].text for r in others)]

    return asyncio.run(run())


def test_rows_already_running_count_toward_the_crossover(gguf_source):
    """Crossover 4: one request running on the small side, then three more sent together: 1 + 3 rows reach
    the crossover, so they start on the large side; the first stays where it started."""
    engine = build(gguf_source, {"crossover_rows": 4})
    try:
        staggered(engine, te.LONG, PROMPTS[:3], GP(max_new_tokens=8), lead=GP(max_new_tokens=400))
        assert started_on(engine) == {"small": 1, "large": 3}
    finally:
        engine.close()


def test_rows_of_one_request_count_toward_the_crossover(gguf_source):
    """num_return_sequences rows are the batch a request joins: 4 samples at crossover 4 start large."""
    engine = build(gguf_source, {"crossover_rows": 4, "crossover_hold_s": 0})
    try:
        rows = asyncio.run(engine.generate(PROMPTS[1], GP(max_new_tokens=4, num_return_sequences=4, do_sample=True)))
        assert len(rows) == 4 and started_on(engine) == {"small": 0, "large": 1}
        assert engine.route(3) == ("small", "large") and engine.route(4) == ("large", "small")
    finally:
        engine.close()


def test_a_full_side_gives_way_to_the_other(gguf_source):
    """Every request would start small (crossover above the batch), but with its 2 rows busy the third
    request starts on the large side at once instead of waiting."""
    engine = build(gguf_source, {"crossover_rows": NEVER}, scheduler={"max_batch_size": 2})
    try:
        texts(engine, PROMPTS[:3], GP(max_new_tokens=6))
        assert started_on(engine) == {"small": 2, "large": 1}
    finally:
        engine.close()


def test_greedy_rows_equal_each_sides_own_greedy_output(gguf_source):
    """The rows a hybrid node routes to a side get that side's own greedy tokens: llama.cpp alone for the
    small side, torch bfloat16 alone for the large side (its kernels give different tokens from the float32
    GGUF on some prompts, so the comparison tells the sides apart)."""
    from graph.models.node_engine import engine_for_node

    params = GP(max_new_tokens=20)
    alone = {}
    for side, rt in (("small", {"backend": "llamacpp"}), ("large", {"backend": "torch", "dtype": "bfloat16"})):
        ref = engine_for_node("tiny", GeneratorNode(model={"path": str(gguf_source)}, runtime={**rt, "threads": 2}))
        ref.start()
        try:
            alone[side] = [te.text_of(ref, p, params) for p in PROMPTS]
        finally:
            ref.close()
    engine = build(gguf_source, {"crossover_rows": 3, "large": {"backend": "torch", "dtype": "bfloat16"}})
    try:
        # alone, one at a time: every request starts small
        assert [te.text_of(engine, p, params) for p in PROMPTS] == alone["small"]
        assert started_on(engine) == {"small": 4, "large": 0}
        # three sent together: 3 node rows, at the crossover: all start large
        got = texts(engine, PROMPTS[1:], params)
        assert started_on(engine) == {"small": 4, "large": 3}
        assert got == alone["large"][1:]
        assert alone["small"] != alone["large"]  # the sides' tokens differ: the comparison tells them apart
    finally:
        engine.close()


def test_the_crossover_is_measured_at_warm_up_and_drives_the_rule(gguf_source):
    engine = build(gguf_source)  # crossover_rows unset: measured
    try:
        cross = engine.crossover_rows
        assert cross is not None and 1 <= cross <= engine.max_batch_size + 1
        assert "measured at warm-up" in engine.runtime_name
        # each burst measured both sides' step times, up to the first size where large was faster
        sizes = sorted(engine.measured)
        assert sizes[0] == 1 and all(b == 2 * a for a, b in zip(sizes, sizes[1:]))
        assert all(small > 0 and large > 0 for small, large in engine.measured.values())
        if cross <= engine.max_batch_size:
            small, large = engine.measured[sizes[-1]]
            assert large < small and sizes[-1] >= cross
        # the warm-up's bursts are not the node's traffic
        stats = engine.stats()
        assert stats["requests_total"] == 0 and stats["generated_tokens_total"] == 0
        assert stats["hybrid_crossover_rows"] == cross
        # and the rule uses it
        assert engine.route(1)[0] == ("large" if cross <= 1 else "small")
        if cross <= engine.max_batch_size:
            assert engine.route(cross)[0] == "large"
    finally:
        engine.close()


def test_steps_take_turns_and_both_sides_decode_at_once(gguf_source):
    """Both sides busy together (one request each) share one step lock and both finish with their own text."""
    engine = build(gguf_source, {"crossover_rows": 2, "crossover_hold_s": 0})
    try:
        assert engine.small._scheduler.step_lock is engine.large._scheduler.step_lock
        long, short = GP(max_new_tokens=300), GP(max_new_tokens=16)
        got = staggered(engine, te.LONG, PROMPTS[:1], short, lead=long)
        assert started_on(engine) == {"small": 1, "large": 1}
        # alone, each starts small: the same tokens (the tiny GGUF is float32, as the torch side)
        assert got == [te.text_of(engine, te.LONG, long), te.text_of(engine, PROMPTS[0], short)]
    finally:
        engine.close()


def test_each_sides_admission_plans_the_other_sides_rows_beside_its_own(gguf_source):
    """The sides take turns, so a request's plan on one side counts the other side's steps: each side's
    `beside` is the other's lane (its rows running, its measured times), and an admitted request's stats say
    how its plan compared with its answer."""
    engine = build(gguf_source, {"crossover_rows": 2}, scheduler={"max_batch_size": 16, "max_wait_s": 600})
    try:
        small, large = engine.small._scheduler, engine.large._scheduler
        assert small.beside is not None and large.beside is not None
        assert small.beside().steps is large.step_times and large.beside().steps is small.step_times

        async def one_running_then_look():
            task = asyncio.ensure_future(engine.generate(te.LONG, GP(max_new_tokens=300)))
            while not small.rows:
                await asyncio.sleep(0.001)
            lane = large.beside()  # what the large side sees of the small side's work now
            await task
            return lane

        lane = asyncio.run(one_running_then_look())
        assert [w.rows for w in lane.running] == [1] and 0 < lane.running[0].tokens <= 300
        assert engine.stats()["small_plan_ratio"] > 0  # the admitted request: answered / planned, measured
    finally:
        engine.close()


def test_stats_and_runtime_name_say_hybrid_and_both_runtimes(gguf_source):
    engine = build(gguf_source, {"crossover_rows": 5})
    try:
        name = engine.runtime_name
        assert name.startswith("hybrid (small: llamacpp") and "large: torch float32" in name
        stats = engine.stats()
        assert stats["runtime"] == "hybrid" and stats["hybrid_crossover_rows"] == 5
        assert stats["hybrid_hold_s"] == HYBRID_HOLD_S > 0  # the default hold
        assert str(stats["small_runtime"]).startswith("llamacpp") and stats["large_runtime"] == "torch float32"
        for key in ("active_rows", "queued_requests", "generated_tokens_total", "kv_mb", "step_ms"):
            assert key in stats
    finally:
        engine.close()


def test_both_sides_take_the_tighter_prompt_limit(gguf_source):
    """llama.cpp holds max_prompt_tokens + max_new_tokens_limit positions per row; torch the model's context.
    A prompt above the tighter limit is a 400 on either side, whatever the load."""
    from graph.errors import InvalidRequest

    engine = build(
        gguf_source,
        {"crossover_rows": 1},
        max_prompt_tokens=40,
        max_new_tokens_limit=20,
        defaults={"max_new_tokens": 8},
    )
    try:
        assert engine.max_prompt_tokens == 40 == engine.small.max_prompt_tokens == engine.large.max_prompt_tokens
        long = " ".join(PROMPTS) * 4
        for cross in (1, NEVER):  # starting large, then small
            engine.crossover_rows = cross
            with pytest.raises(InvalidRequest, match="max_prompt_tokens") as err:
                asyncio.run(engine.generate(long, GP(max_new_tokens=4)))
            assert err.value.field == "prompt"
    finally:
        engine.close()


def test_auto_builds_the_hybrid_its_table_names_with_the_tables_crossover(gguf_source, monkeypatch):
    """`backend: auto` on a CPU kind whose table entry for the model is a hybrid gives a HybridEngine: both sides
    built from the entry, its crossover used (no warm-up bursts), the start-up line and /node_stats saying where
    the crossover comes from. The kind's table is injected (the tiny model is measured on no real kind)."""
    from graph.models import runtimes
    from graph.models.node_engine import engine_for_node

    key = str(gguf_source)  # the table admits a local folder by its path
    hybrid = runtimes.Choice(
        "float32",
        "none",
        False,
        "injected for the test: llamacpp for few rows, torch float32 from 3",
        frozenset({key}),
        backend="hybrid",
        small=runtimes.Choice("float32", "none", False, "few rows", backend="llamacpp"),
        large=runtimes.Choice("float32", "none", False, "many rows"),
        crossover_rows=3,
    )
    torch_only = runtimes.Choice("float32", "none", False, "the rest")
    monkeypatch.setitem(runtimes.TABLE, "amx", {"latency": (hybrid, torch_only), "throughput": (torch_only,)})
    monkeypatch.setattr(runtimes, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": {"avx512f", "avx512_bf16", "amx_bf16"})
    auto = GeneratorNode(
        model={"path": key}, runtime={"backend": "auto", "threads": 2}, scheduler={"max_batch_size": 8}
    )
    engine = engine_for_node("tiny", auto)
    try:
        assert engine.warmup()
        assert engine.crossover_rows == 3 and engine.measured == {}  # the table's, not measured
        name = engine.runtime_name
        assert name.startswith("hybrid (small: llamacpp") and "large: torch float32" in name
        assert "crossover 3 rows, runtime auto: measured, graph/models/runtimes.py" in name
        assert engine.route(2)[0] == "small" and engine.route(3)[0] == "large"
        texts(engine, PROMPTS[:1], GP(max_new_tokens=4))
        texts(engine, PROMPTS[:3], GP(max_new_tokens=4))
        assert started_on(engine) == {"small": 1, "large": 3}
        stats = engine.stats()
        assert stats["hybrid_crossover_rows"] == 3 and stats["runtime"] == "hybrid"
        assert stats["hybrid_crossover_source"] == "runtime auto: measured, graph/models/runtimes.py"
    finally:
        engine.close()
    # the same node on a kind whose table names one runtime: one engine, as before
    monkeypatch.setattr(runtimes, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": {"avx2"})
    single = engine_for_node("tiny", auto)
    try:
        assert not hasattr(single, "sides") and not single.runtime_name.startswith("hybrid")
    finally:
        single.close()


def test_both_sides_refusing_raises_the_first_sides_refusal(gguf_source):
    """Tiny limits (1 row, 1 waiting request per side) and no step taken meanwhile (the test holds the sides'
    step lock): each side takes two requests; the second request finds the small side full and starts large;
    a request the small side refuses passes to the large one; a request both refuse raises Overloaded (429 +
    Retry-After upstream), from open_stream and from generate alike, each refusal counted on its side. The
    load the router counts returns to zero once the streams are closed, and the node serves again."""
    from graph.errors import Overloaded

    engine = build(gguf_source, {"crossover_rows": NEVER}, scheduler={"max_batch_size": 1, "max_queue": 1})
    long = GP(max_new_tokens=200)

    async def run():
        streams, refusals = [], []
        with engine.small._scheduler.step_lock:  # no step runs: nothing finishes, nothing frees a slot
            for _ in range(5):
                try:
                    streams.append(engine.open_stream(PROMPTS[0], long))
                except Overloaded as refused:
                    refusals.append(refused)
            loads = dict(engine._rows)
            with pytest.raises(Overloaded, match="tiny: .* retry later") as err:
                await engine.generate(PROMPTS[1], long)
        for s in streams:
            await s.aclose()
        return len(streams), refusals, loads, err.value

    try:
        accepted, refusals, loads, refused = asyncio.run(run())
        assert accepted == 4 and len(refusals) == 1 and loads == {"small": 2, "large": 2}
        assert refusals[0].retry_after_s >= 1 and refused.retry_after_s >= 1
        stats = engine.stats()
        assert stats["small_requests_total"] == 2 and stats["large_requests_total"] == 2
        # small refused the 4th request (passed on), the 5th and the generate; large the 5th and the generate
        assert (engine.small.stats()["rejected_total"], engine.large.stats()["rejected_total"]) == (3, 2)
        assert stats["rejected_total"] == 5
        assert engine._rows == {"small": 0, "large": 0}
        assert len(asyncio.run(engine.generate(PROMPTS[0], GP(max_new_tokens=4)))) == 1
    finally:
        engine.close()


# -- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "runtime, message",
    [
        ({"backend": "hybrid", "large": {"dtype": "bfloat16"}}, "backend hybrid needs `small`"),
        ({"backend": "hybrid", "small": {"backend": "llamacpp"}}, "backend hybrid needs `large`"),
        ({"backend": "torch", "small": {"backend": "llamacpp"}}, "small: only with backend hybrid"),
        ({"backend": "llamacpp", "crossover_rows": 4}, "crossover_rows: only with backend hybrid"),
        ({"backend": "onnx", "crossover_hold_s": 1}, "crossover_hold_s: only with backend hybrid"),
        (
            {"backend": "hybrid", "small": {"backend": "llamacpp"}, "large": {}, "crossover_hold_s": -1},
            "crossover_hold_s",
        ),
        (
            {"backend": "hybrid", "small": {"backend": "hybrid", "small": {}, "large": {}}, "large": {}},
            "small.backend: hybrid is not allowed",
        ),
        (
            {"backend": "hybrid", "small": {"backend": "llamacpp"}, "large": {"backend": "auto"}},
            "large.backend: auto is not allowed",
        ),
        (
            {"backend": "hybrid", "small": {"backend": "llamacpp", "threads": 1}, "large": {}},
            "small.threads: set threads on the hybrid runtime",
        ),
        (
            {"backend": "hybrid", "dtype": "bfloat16", "small": {"backend": "llamacpp"}, "large": {}},
            "dtype: with backend hybrid, set these on a side",
        ),
        ({"backend": "hybrid", "small": {"backend": "llamacpp"}, "large": {}, "crossover_rows": 0}, "crossover_rows"),
        ({"backend": "hybrid", "compile": True, "small": {"backend": "llamacpp"}, "large": {}}, "on a torch side"),
    ],
)
def test_config_errors_name_the_key_and_the_rule(runtime, message):
    with pytest.raises(ValidationError, match=message):
        RuntimeConfig.model_validate(runtime)


def test_a_graph_config_with_a_hybrid_node_loads_and_says_what_is_wrong():
    from graph.config import parse_config
    from graph.errors import ConfigError

    base = {
        "name": "hybrid",
        "generators": {"g": {"model": {"embedded": "smollm2-135m-instruct"}}},
        "classifier": {
            "model": {"path": "x"},
            "mode": "zero_shot",
            "labels": {"a": "good", "b": "bad"},
            "score_label": "a",
        },
    }
    good = {"backend": "hybrid", "small": {"backend": "llamacpp"}, "large": {"dtype": "bfloat16"}}
    base["generators"]["g"]["runtime"] = good
    cfg = parse_config(base)
    assert cfg.generators["g"].runtime.large is not None and cfg.generators["g"].runtime.large.dtype == "bfloat16"
    base["generators"]["g"]["runtime"] = {**good, "large": {"dtype": "float64"}}
    with pytest.raises(ConfigError, match="generators.g.runtime.large.dtype"):
        parse_config(base)


# -- every node feature on both sides ----------------------------------------------------------------


@pytest.fixture(scope="module", params=["small", "large"])
def llama(request, gguf_source):
    """A hybrid node with every request starting on one side (the name test_engine's tests take)."""
    engine = build(gguf_source, {"crossover_rows": NEVER if request.param == "small" else 1})
    engine.side = request.param
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def engine(llama):
    """The name test_structured's tests take."""
    return llama


def test_every_request_of_the_fixture_starts_on_its_side(llama):
    before = started_on(llama)
    asyncio.run(llama.generate(PROMPTS[0], GP(max_new_tokens=3)))
    after = started_on(llama)
    assert after[llama.side] == before[llama.side] + 1
    assert sum(after.values()) == sum(before.values()) + 1


test_stop_string_truncates_before_it = te.test_stop_string_truncates_before_it
test_stream_never_sends_text_past_a_stop_string = te.test_stream_never_sends_text_past_a_stop_string
test_cancel_by_request_id_frees_the_row = te.test_cancel_by_request_id_frees_the_row
test_closing_a_stream_stops_generation = te.test_closing_a_stream_stops_generation
test_cancelled_task_stops_generation = te.test_cancelled_task_stops_generation
test_stream_concatenates_to_the_result_and_matches_generate = (
    te.test_stream_concatenates_to_the_result_and_matches_generate
)
test_seed_reproducible_alone_and_in_a_batch = te.test_seed_reproducible_alone_and_in_a_batch
test_logprobs = te.test_logprobs
test_max_new_tokens_gives_length = te.test_max_new_tokens_gives_length
test_every_row_of_a_sampled_request_is_schema_valid = ts.test_every_row_of_a_sampled_request_is_schema_valid
test_greedy_constrained_and_free_rows_share_a_batch = ts.test_greedy_constrained_and_free_rows_share_a_batch
test_json_object_starts_an_object = ts.test_json_object_starts_an_object


def test_one_context_on_both_sides_keeps_the_whole_context(gguf_source):
    """Both sides on torch (one context): a request's prompt limit is the context less its own max_new_tokens, as
    on one engine, not less the node's max_new_tokens_limit (the default config's hybrid took 256 tokens off
    SmolLM2's 8,192 that way, and refused an 8,000-token prompt). A prompt at that limit is answered."""
    engine = build(gguf_source, {"crossover_rows": NEVER, "small": {"backend": "torch"}, "large": {"backend": "torch"}})
    try:
        context = engine.small._runner.max_positions
        assert context and context == engine.large._runner.max_positions
        limit = engine.prompt_limit(GP(max_new_tokens=4))
        assert limit == min(engine.small.max_prompt_tokens, context - 4)
        assert limit > context - 1000  # max_new_tokens_limit (1000) is not taken off
        ids = engine.tokenizer(" ".join(PROMPTS) * 200, add_special_tokens=False)["input_ids"][:limit]
        (r,) = asyncio.run(engine.generate(ids, GP(max_new_tokens=4)))
        assert r.prompt_tokens == limit and r.completion_tokens >= 1
    finally:
        engine.close()
