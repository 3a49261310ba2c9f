"""Starts a real `bentoml serve` in a subprocess for end-to-end tests, and stops it cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENTOML = ROOT / ".venv" / "bin" / "bentoml"
ARTIFACTS = ROOT / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bentoml serve TARGET [--arg-file CONFIG]` on a free port, logs under artifacts/logs/."""

    def __init__(
        self,
        target: str = "services.graph:InferenceGraph",
        config: str | Path | None = None,
        name: str = "server",
        port: int | None = None,
        ready_path: str = "/readyz",
    ) -> None:
        self.target, self.config, self.name = target, config, name
        self.port = port or free_port()
        self.ready_path = ready_path
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = ARTIFACTS / "logs" / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 240) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(BENTOML), "serve", self.target, "--port", str(self.port), "--host", "127.0.0.1"]
        if self.config is not None:
            cmd += ["--arg-file", str(self.config)]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "BENTOML_DO_NOT_TRACK": "true",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited early:\n{self.log()[-4000:]}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout_s}s:\n{self.log()[-4000:]}")

    def worker_pid(self, service: str) -> int:
        """PID of the worker process serving `service` (e.g. "generator_tiny_b")."""
        assert self.proc is not None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.proc.pid and b"--service-name" in args:
                if args[args.index(b"--service-name") + 1].decode() == service:
                    return int(entry.name)
        raise LookupError(f"no worker for service {service!r}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def workers(self) -> list[int]:
        """PIDs of the worker processes (each in a session of its own, so not reached by killpg)."""
        assert self.proc is not None
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if (
                    entry.name.isdigit()
                    and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid
                ):
                    pids.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
        return pids

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = self.workers()
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # The entry worker outlives `bentoml serve` by minutes (BentoML 1.4.39), orphaned and holding its
        # ports (the gRPC face's fixed one too): end the workers that are left.
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sse_events(response: httpx.Response) -> list[tuple[float, str]]:
    """(arrival time, data) of each server-sent event, checking the `data: ` framing."""
    out: list[tuple[float, str]] = []
    buffer = ""
    for chunk in response.iter_text():
        buffer += chunk
        while "\n\n" in buffer:
            event, buffer = buffer.split("\n\n", 1)
            assert event.startswith("data: "), f"not an SSE event: {event!r}"
            out.append((time.monotonic(), event[len("data: ") :]))
    assert buffer == "", f"trailing bytes after last event: {buffer!r}"
    return out


def node_tokens(server: Server, node: str) -> float:
    """The node's generated-tokens counter, from the entry's /node_stats."""
    r = httpx.post(server.url + "/node_stats", json={}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()[node]["generated_tokens_total"]


def assert_dropped_stream_stops(server: Server, node: str, path: str, body: dict, *, tokens: int) -> None:
    """Leave a stream of `tokens` tokens after 20 lines: the node's counter must stop within 2 s."""
    before = node_tokens(server, node)
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as r:
        assert r.status_code == 200
        for n, _ in enumerate(r.iter_lines()):
            if n > 20:
                break  # leave mid-stream: the connection closes here
    time.sleep(2.0)
    stopped_at = node_tokens(server, node)
    time.sleep(1.5)
    assert node_tokens(server, node) == stopped_at, "node still generating for a gone client"
    assert stopped_at - before < tokens, "the node ran the request to the end"
