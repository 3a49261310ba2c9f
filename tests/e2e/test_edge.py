"""The HTTP edge through a real `bentoml serve` (tiny config with API keys): keys, content types,
readiness that answers within a second, a killed generator worker costing no request, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
import yaml

from tests.server import ROOT, Server, free_port

KEY = "edge-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER = {"Authorization": "Bearer other-team-key-0123456789"}
GRACE_S = 3


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["auth"] = {"keys_env": "EDGE_TEST_KEYS"}
    cfg["graph_timeout_s"] = 120
    cfg["shutdown_grace_s"] = GRACE_S
    cfg["grpc"] = {**cfg.get("grpc", {}), "enabled": True, "host": "127.0.0.1", "port": free_port()}
    folder = tmp_path_factory.mktemp("edge")
    cfg["chat"] = {"database_url": f"sqlite:///{folder}/chat.sqlite3"}
    path = folder / "tiny_keys.yaml"
    path.write_text(yaml.safe_dump(cfg))
    os.environ["EDGE_TEST_KEYS"] = f"tester:{KEY}, other:other-team-key-0123456789"
    srv = Server(config=path, name="edge")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        os.environ.pop("EDGE_TEST_KEYS", None)


def post(server: Server, path: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def test_a_key_is_needed_and_checked(server):
    r = post(server, "/generate", {"prompt": "hi"})
    assert r.status_code == 401 and r.json()["field"] == "authorization" and r.headers["www-authenticate"] == "Bearer"
    r = post(server, "/generate", {"prompt": "hi"}, headers={"Authorization": "Bearer not-the-key-0123456789"})
    assert r.status_code == 401 and "not valid" in r.json()["message"]
    r = post(server, "/generate", {"prompt": "hi", "model": "tiny_a"}, headers=AUTH)
    assert r.status_code == 200 and r.json()[0]["model"] == "tiny_a"
    for path in ("/livez", "/readyz", "/metrics"):  # the probes stay open
        assert httpx.get(server.url + path, timeout=5).status_code == 200


def test_openai_face_needs_the_key_and_answers_in_its_shape(server):
    """/v1 is behind the same keys; the SDK sends its api_key as the bearer token; refusals there are
    OpenAI's error object (the SDK raises AuthenticationError), as is a non-JSON body (415)."""
    import openai

    anonymous = openai.OpenAI(base_url=server.url + "/v1", api_key="not-the-key-0123456789", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        anonymous.models.list()
    assert isinstance(err.value.body, dict) and err.value.body["type"] == "authentication_error"
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    assert "graph" in [m.id for m in client.models.list()]
    out = client.completions.create(model="tiny_a", prompt="hi", max_tokens=2)
    assert out.usage is not None and out.usage.completion_tokens >= 1
    r = httpx.post(
        server.url + "/v1/completions",
        content=b"prompt=hi",
        timeout=10,
        headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415 and r.json()["error"]["param"] == "content-type"


def test_chat_histories_belong_to_the_key_that_made_them(server, tmp_path):
    """A caller-chosen user_id is no secret: another key neither reads nor deletes that history."""
    user = f"alice-{time.time_ns()}"
    r = post(server, "/chat", {"user_id": user, "message": "Hello there", "model": "tiny_a"}, headers=AUTH)
    assert r.status_code == 200, r.text
    mine = post(server, "/chat_history", {"user_id": user}, headers=AUTH).json()
    assert mine["turns"] == 1 and len(mine["messages"]) == 2
    theirs = post(server, "/chat_history", {"user_id": user}, headers=OTHER)
    assert theirs.status_code == 200 and theirs.json()["turns"] == 0 and theirs.json()["messages"] == []
    assert post(server, "/chat_delete", {"user_id": user}, headers=OTHER).json()["deleted_messages"] == 0
    assert post(server, "/chat_history", {"user_id": user}, headers=AUTH).json()["turns"] == 1
    assert post(server, "/chat_delete", {"user_id": user}, headers=AUTH).json()["deleted_messages"] == 2


def test_grpc_needs_the_key_too(server):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from protos import text_generator_pb2 as tg
    from protos import text_generator_pb2_grpc as tg_grpc

    port = yaml.safe_load(server.config.read_text())["grpc"]["port"]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.time() + 60  # health stays open: it is how probes find the server
        while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != health_pb2.HealthCheckResponse.SERVING:
            assert time.time() < deadline
            time.sleep(0.5)
        stub = tg_grpc.TextGeneratorStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(tg.GenerateRequest(text="hi"), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "authorization" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            list(
                stub.GenerateStreamed(
                    tg.GenerateRequest(text="hi"),
                    timeout=30,
                    metadata=[("authorization", "Bearer wrong-key-0123456789")],
                )
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.Generate(tg.GenerateRequest(text="hi"), timeout=60, metadata=[("authorization", f"Bearer {KEY}")])
        assert reply.text.startswith("hi")


@pytest.mark.parametrize(
    "ctype, body",
    [
        ("multipart/form-data", b"--x\r\n"),  # no boundary: starlette used to raise KeyError -> 500
        ("text/plain", b'{"prompt": "hi"}'),
        ("application/x-www-form-urlencoded", b"prompt=hi"),
    ],
)
def test_bodies_must_be_json(server, ctype, body):
    for path in ("/generate", "/generate_score", "/classify", "/generate_stream"):
        r = httpx.post(server.url + path, content=body, headers={**AUTH, "Content-Type": ctype}, timeout=10)
        assert r.status_code == 415, (path, r.status_code, r.text)
        assert r.json()["field"] == "content-type" and ctype in r.json()["message"]


def test_readyz_names_the_nodes(server):
    r = httpx.get(server.url + "/readyz", timeout=5)
    assert r.status_code == 200 and r.json()["nodes"] == {"tiny_a": True, "tiny_b": True, "classifier": True}


async def _generate_many(server: Server, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120, headers=AUTH) as client:
        body = {"prompt": "Hello world, this is", "model": "tiny_a", "params": {"max_new_tokens": 600, "seed": 1}}
        return await asyncio.gather(*[client.post(server.url + "/generate", json=body) for _ in range(n)])


def test_killed_generator_worker_costs_no_request(server):
    """kill -9 of a generator worker with 8 requests in flight: its supervisor starts a new one, the
    entry sends the calls again, all 8 get 200 with the text an undisturbed run gives; meanwhile
    /readyz answers 503 naming the node, each time within a second."""
    (baseline,) = asyncio.run(_generate_many(server, 1))
    assert baseline.status_code == 200

    async def scenario():
        task = asyncio.create_task(_generate_many(server, 8))
        await asyncio.sleep(0.5)
        os.kill(server.worker_pid("generator_tiny_a"), signal.SIGKILL)
        probes = []
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(5):
                t0 = time.monotonic()
                r = await client.get(server.url + "/readyz")
                probes.append((r.status_code, time.monotonic() - t0, r.text))
                await asyncio.sleep(0.2)
        return await task, probes

    responses, probes = asyncio.run(scenario())
    assert all(elapsed < 1.0 for _, elapsed, _ in probes), probes
    assert any(status == 503 and "tiny_a" in text for status, _, text in probes), probes
    assert [r.status_code for r in responses] == [200] * 8, [r.text[:200] for r in responses]
    texts = {r.json()[0]["results"][0]["text"] for r in responses}
    assert texts == {baseline.json()[0]["results"][0]["text"]}  # greedy: the same answer as undisturbed
    assert "worker gone" in server.log()


def test_sigterm_ends_every_process_within_the_grace_period(server):
    """The last test of the module: SIGTERM to `bentoml serve` with a request in flight."""
    assert server.proc is not None
    pids = _tree(server.proc.pid)
    assert len(pids) >= 5, pids  # the server, the entry and three node workers
    import threading

    body = {"prompt": "Hello world, this is", "model": "tiny_a", "params": {"max_new_tokens": 900}}
    answers: list[object] = []

    def in_flight() -> None:  # a request in flight when the signal comes
        try:
            answers.append(httpx.post(server.url + "/generate", json=body, headers=AUTH, timeout=60).status_code)
        except httpx.HTTPError as exc:
            answers.append(type(exc).__name__)

    threading.Thread(target=in_flight, daemon=True).start()
    time.sleep(0.5)
    t0 = time.monotonic()
    os.killpg(server.proc.pid, signal.SIGTERM)
    deadline = t0 + GRACE_S + 15  # the grace period, then the workers' own teardown
    while time.monotonic() < deadline:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and "zombie" not in _state(p)]
        if not alive:
            break
        time.sleep(0.2)
    assert not alive, f"still alive after {time.monotonic() - t0:.1f}s: {alive}"
    print(f"every process gone {time.monotonic() - t0:.1f}s after SIGTERM; the request in flight got {answers}")


def _tree(root: int) -> list[str]:
    """`root` and every process below it."""
    children: dict[str, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(entry)
    out, stack = [], [str(root)]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def _state(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/status").read().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"
