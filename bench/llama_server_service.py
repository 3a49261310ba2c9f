"""Second baseline for `make bench-graph`: the graph a user builds in an afternoon from llama.cpp's llama-server.

The entry service starts one `llama-server` process per generator of the graph config (the same packaged
GGUF files the llamacpp backend loads: SmolLM2 Q4_1, Gemma 3 Q4_K_M), each with one thread, continuous
batching and 32 slots of 512 positions (`kv_unified` off, llama-server's default with `-np`). A request
fans the prompt out to every llama-server at once (`asyncio.gather`, llama-server's OpenAI endpoints:
`/v1/chat/completions` for a generator with `chat_template: true`, `/v1/completions` otherwise), then
scores every completion in one call to the graph's own classifier service (MiniLM zero-shot, adaptive
batching), as the graph does. It answers `/generate_score` with the graph's request and answer shapes
(`original_sentence`, `params`; a list of ScoredCompletion), so scripts/bench_graph.py sends both the
same body.

    make llama-cpp   # builds llama-server once (scripts/build_llama_cpp.sh)
    bentoml serve bench.llama_server_service:LlamaServerGraph --arg-file configs/default.yaml --port 3000
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import logging
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import bentoml
from pydantic import BaseModel, ConfigDict, Field

from bench.llama_tools import llama_server_path
from graph.config import GeneratorNode
from graph.entry.schemas import DEFAULT_PROMPT, ScoredCompletion
from graph.models.gguf_model import embedded_gguf
from graph.results import Classification
from services.classifier import make_classifier_service
from services.common import graph_config, keep_sessions_open

with bentoml.importing():
    import httpx

log = logging.getLogger("graph")
ROOT = Path(__file__).resolve().parent.parent
SLOTS = 32  # -np: sequences each llama-server decodes together (continuous batching)
THREADS = 1  # -t / -tb: one core per generator, as the graph's two nodes share this machine's cores
POSITIONS_PER_SLOT = 512  # -c is SLOTS x this: prompt (chat template included) + completion per slot
READY_TIMEOUT_S = 180.0
CONFIG = graph_config()
Classifier = make_classifier_service(CONFIG.classifier)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the worker that started it dies (PR_SET_PDEATHSIG)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class LlamaServer:
    """One `llama-server` process on a GGUF file, on a free loopback port; logs under artifacts/logs/."""

    def __init__(self, name: str, gguf: Path) -> None:
        self.name, self.port = name, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = ROOT / "artifacts" / "logs" / f"llama-server-{name}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(llama_server_path()),
            "-m",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "-t",
            str(THREADS),
            "-tb",
            str(THREADS),
            "-np",
            str(SLOTS),
            "-c",
            str(SLOTS * POSITIONS_PER_SLOT),
            "-cb",
            "--no-webui",
        ]
        log.info("%s: %s", name, " ".join(cmd))
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until /health answers 200 (the model is loaded); RuntimeError with the log's tail otherwise."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server {self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"llama-server {self.name} not ready after {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class BaselineParams(BaseModel):
    """The generation parameters llama-server is given; any other field is a 400 naming it."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(default=None, ge=1, le=POSITIONS_PER_SLOT // 2)
    do_sample: bool | None = Field(default=None, description="false: greedy (llama-server's temperature 0).")
    temperature: float | None = Field(default=None, ge=0.0, le=100.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=1000)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)


class BaselineRequest(BaseModel):
    """The graph's /generate_score body: a prompt for every generator and overrides of their defaults."""

    model_config = ConfigDict(extra="forbid")

    original_sentence: str = Field(default=DEFAULT_PROMPT, min_length=1, description="Prompt given to every generator.")
    params: BaselineParams | None = Field(default=None, description="Overrides of the config's generator defaults.")


def sampling(node: GeneratorNode, params: BaselineParams | None) -> dict[str, Any]:
    """llama-server's sampling fields: the node's config defaults, then the request's overrides."""
    merged = node.defaults.model_dump()
    merged.update(params.model_dump(exclude_none=True) if params else {})
    out: dict[str, Any] = {
        "max_tokens": merged["max_new_tokens"],
        "temperature": merged["temperature"] if merged["do_sample"] else 0.0,
        "top_p": merged["top_p"],
        "top_k": merged["top_k"],
        "repeat_penalty": merged["repetition_penalty"],
    }
    if merged.get("seed") is not None:
        out["seed"] = merged["seed"]
    return out


@bentoml.service(traffic={"timeout": 600})
class LlamaServerGraph:
    """Every config generator on its own llama-server, every completion scored by the graph's classifier."""

    classifier = bentoml.depends(Classifier)

    def __init__(self) -> None:
        self.nodes = dict(CONFIG.generators)
        self.servers: dict[str, LlamaServer] = {}
        atexit.register(self.stop)
        for name, node in self.nodes.items():
            if not node.model.embedded:
                raise ValueError(f"generators.{name}: the llama-server baseline runs the embedded GGUF models only")
            self.servers[name] = LlamaServer(name, embedded_gguf(str(node.model.embedded)))
        for server in self.servers.values():
            server.wait_ready()
            log.info("llama-server %s ready at %s (log %s)", server.name, server.url, server.log_path)
        keep_sessions_open(self.classifier)
        self._client: httpx.AsyncClient | None = None

    @bentoml.on_shutdown
    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # made in the serving event loop
            limit = 2 * SLOTS * max(1, len(self.servers)) + 8
            self._client = httpx.AsyncClient(
                timeout=600, limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
            )
        return self._client

    async def complete(self, name: str, prompt: str, params: BaselineParams | None) -> dict[str, Any]:
        """One completion from generator `name`'s llama-server: (text, finish_reason, token counts)."""
        node, server = self.nodes[name], self.servers[name]
        body = sampling(node, params)
        if node.chat_template:
            body["messages"] = [{"role": "user", "content": prompt}]
            path = "/v1/chat/completions"
        else:
            body["prompt"] = prompt
            path = "/v1/completions"
        r = await self.client().post(server.url + path, json=body)
        r.raise_for_status()
        out = r.json()
        choice = out["choices"][0]
        text = choice["message"]["content"] if node.chat_template else choice["text"]
        return {
            "text": text or "",
            "finish_reason": "length" if choice.get("finish_reason") == "length" else "stop",
            "prompt_tokens": out["usage"]["prompt_tokens"],
            "completion_tokens": out["usage"]["completion_tokens"],
        }

    @bentoml.api(input_spec=BaselineRequest)  # pyright: ignore[reportArgumentType]  bentoml's stub says IODescriptor; pydantic works
    async def generate_score(self, **fields: Any) -> list[ScoredCompletion]:
        """Every generator at once, then one batched classifier call for every completion."""
        req = BaselineRequest(**fields)
        names = list(self.servers)
        outs = await asyncio.gather(*(self.complete(n, req.original_sentence, req.params) for n in names))
        raw = await self.classifier.to_async.classify([req.original_sentence + o["text"] for o in outs])
        scores = [Classification.model_validate(c) for c in raw]
        return [
            ScoredCompletion(
                model=name,
                index=0,
                generated=req.original_sentence + o["text"],
                completion=o["text"],
                score=c.score,
                label=c.label,
                labels=c.labels,
                finish_reason=o["finish_reason"],
                prompt_tokens=o["prompt_tokens"],
                completion_tokens=o["completion_tokens"],
            )
            for name, o, c in zip(names, outs, scores)
        ]
