"""The test-server harness starts reliably: an early exit on an address already in use is retried.

A real `bentoml serve` of configs/tiny.yaml is asked for an HTTP port another socket holds; that
socket lets go a few seconds later, as a server still shutting down would. The harness waits for
the failed start's processes to be gone and the port to be free, starts again, and says so.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests.server import GRPC_FIXED_PORT, ROOT, Server, free_port


def test_start_retries_after_address_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    released = threading.Event()
    server = Server(config="configs/tiny.yaml", name="harness-retry", port=port)

    def release_later() -> None:
        # Let go once the first start has failed on it and the harness waits (a shutting-down server's port).
        deadline = time.time() + 180
        while time.time() < deadline and "attempt 2 of" not in server.log():
            time.sleep(0.5)
        holder.close()
        released.set()

    threading.Thread(target=release_later, daemon=True).start()
    try:
        server.start()
        assert released.is_set()
        assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
    finally:
        server.stop()
        holder.close()
    err = capsys.readouterr().err
    assert f"exited early on an address already in use (port {port})" in err and "attempt 2 of" in err, err
    assert "attempt 2 of" in server.log()


def test_fixed_grpc_port_becomes_a_free_one_per_server() -> None:
    a = Server(config=ROOT / "configs" / "default.yaml", name="harness-grpc-a")
    b = Server(config="configs/default.yaml", name="harness-grpc-b")
    assert a.grpc_port and b.grpc_port and a.grpc_port != b.grpc_port
    assert GRPC_FIXED_PORT not in (a.grpc_port, b.grpc_port)
    assert f"port: {a.grpc_port}" in open(str(a.config)).read()
    tiny = Server(config="configs/tiny.yaml", name="harness-grpc-off")
    assert tiny.grpc_port is None and tiny.config == "configs/tiny.yaml"  # gRPC off there: left as it is
