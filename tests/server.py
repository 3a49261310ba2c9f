"""Starts a real `bentoml serve` in a subprocess for end-to-end tests, and stops it cleanly."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
BENTOML = ROOT / ".venv" / "bin" / "bentoml"
ARTIFACTS = ROOT / "artifacts"
GRPC_FIXED_PORT = 50051  # the port the shipped configs (and GrpcConfig's default) give the gRPC faces
START_ATTEMPTS = 3  # `bentoml serve` exiting early on an address already in use is retried this often in all
IN_USE = re.compile(r"address already in use|errno 98", re.IGNORECASE)
IN_USE_PORT = re.compile(r"(?:[Cc]ould not bind|cannot bind) [\w.\[\]:]*?:(\d+)|addr='[a-z]+://[^']*:(\d+)'")
log = logging.getLogger("tests.server")


class AddressInUse(RuntimeError):
    """`bentoml serve` exited early because a port it (or a node, or BentoML itself) chose was taken."""

    def __init__(self, message: str, port: int | None) -> None:
        super().__init__(message)
        self.port = port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether `port` can be bound on every address now (as a server binding 0.0.0.0 needs)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


class Server:
    """`bentoml serve TARGET [--arg-file CONFIG]` on a free port, logs under artifacts/logs/."""

    def __init__(
        self,
        target: str = "services.graph:InferenceGraph",
        config: str | Path | None = None,
        name: str = "server",
        port: int | None = None,
        ready_path: str = "/readyz",
        env: dict[str, str] | None = None,
    ) -> None:
        """`env`: set for the server's processes, over this process's environment."""
        self.target, self.config, self.name = target, config, name
        self.extra_env = dict(env or {})
        self.fixed_port = port is not None
        self.port = port or free_port()
        self.ready_path = ready_path
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = ARTIFACTS / "logs" / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.marker = ""  # in the environment of every process of the current start (see processes())
        self.grpc_port: int | None = None
        self.config = self._own_grpc_port(config)

    def _own_grpc_port(self, config: str | Path | None) -> str | Path | None:
        """A graph config whose gRPC faces are on the project's fixed port gets a free one of its own
        (written beside the log), so two test servers, or one still shutting down, never share it."""
        if config is None:
            return None
        path = Path(config) if Path(config).is_absolute() else ROOT / config
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            return config
        if not isinstance(data, dict) or "generators" not in data:
            return config  # not a graph config (a node's arguments)
        grpc = data.get("grpc") or {}
        if not grpc.get("enabled", True) or grpc.get("port", GRPC_FIXED_PORT) != GRPC_FIXED_PORT:
            return config  # off, or a port the test chose
        self.grpc_port = free_port()
        data["grpc"] = {**grpc, "port": self.grpc_port}
        own = ARTIFACTS / "logs" / f"{self.name}-{self.port}.config.yaml"
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_text(yaml.safe_dump(data, sort_keys=False))
        return own

    def start(self, timeout_s: float = 240) -> Server:
        """Start and wait until ready. An early exit on an address already in use (a port BentoML or a
        node chose for itself, or one a server still shutting down holds) waits for this start's
        processes to be gone and for the port to be free, then starts again: START_ATTEMPTS in all,
        each retry said in the test log."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                return self._start_once(timeout_s, fresh_log=attempt == 1)
            except AddressInUse as exc:
                if attempt == START_ATTEMPTS:
                    raise RuntimeError(
                        f"bentoml serve exited early {attempt} times on an address in use:\n{exc}"
                    ) from None
                note = (
                    f"tests.server: {self.name}: bentoml serve exited early on an address already in use "
                    f"(port {exc.port or 'unknown'}); waiting for its processes to be gone, then starting again "
                    f"(attempt {attempt + 1} of {START_ATTEMPTS})"
                )
                log.warning(note)
                print(note, file=sys.stderr)
                with self.log_path.open("a") as fh:
                    fh.write(f"\n{note}\n")
                self._wait_gone(exc.port)
                if not self.fixed_port:
                    self.port = free_port()
                    self.url = f"http://127.0.0.1:{self.port}"
        raise AssertionError("unreachable")

    def processes(self) -> list[int]:
        """PIDs of every process of the current start, wherever it was reparented: they carry its marker."""
        needle = f"TESTS_SERVER_MARKER={self.marker}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if needle in (entry / "environ").read_bytes():
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    def _wait_gone(self, port: int | None, timeout_s: float = 60) -> None:
        """End what is left of the failed start, then wait (bounded) until its processes are gone and
        `port` can be bound again."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if not self.processes() and (port is None or port_free(port)):
                return
            time.sleep(0.5)

    def _start_once(self, timeout_s: float, fresh_log: bool) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if fresh_log:
            self.log_path.write_bytes(b"")
        offset = self.log_path.stat().st_size  # this start's lines begin here
        self.marker = uuid.uuid4().hex
        cmd = [str(BENTOML), "serve", self.target, "--port", str(self.port), "--host", "127.0.0.1"]
        if self.config is not None:
            cmd += ["--arg-file", str(self.config)]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "BENTOML_DO_NOT_TRACK": "true",
            "TOKENIZERS_PARALLELISM": "false",
            "TESTS_SERVER_MARKER": self.marker,
            **self.extra_env,
        }
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_bytes()[offset:].decode(errors="replace")[-4000:]
                if IN_USE.search(tail):
                    found = [a or b for a, b in IN_USE_PORT.findall(tail)]
                    raise AddressInUse(f"bentoml serve exited early:\n{tail}", int(found[-1]) if found else None)
                raise RuntimeError(f"bentoml serve exited early:\n{tail}")
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
        try:
            return self.services()[service]
        except KeyError:
            raise LookupError(f"no worker for service {service!r}") from None

    def services(self) -> dict[str, int]:
        """{service name: pid} of the worker processes that serve one service each."""
        out = {}
        for pid, args in self._children():
            if b"--service-name" in args:
                out[args[args.index(b"--service-name") + 1].decode()] = pid
        return out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def workers(self) -> list[int]:
        """PIDs of the worker processes (each in a session of its own, so not reached by killpg)."""
        return [pid for pid, _ in self._children()]

    def _children(self) -> list[tuple[int, list[bytes]]]:
        """(pid, command-line arguments) of each process whose parent is `bentoml serve`."""
        assert self.proc is not None
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == self.proc.pid:
                    out.append((int(entry.name), (entry / "cmdline").read_bytes().split(b"\0")))
            except (OSError, ValueError, IndexError):
                continue
        return out

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
        for pid in {*workers, *self.processes()}:  # the marker finds the ones reparented elsewhere too
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
