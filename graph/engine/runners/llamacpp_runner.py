"""Runs a GGUF model on llama.cpp (ggml's CPU kernels) as the engine's model runner: prefill and decode.

The project's scheduler, sampler and admission stay in charge, as with the onnx runner; only the
forward pass moves to llama.cpp, through llama-cpp-python's low-level binding of `llama.h`. Each row
of the node's batch is one llama.cpp *sequence*: a decode step is one `llama_decode` call holding one
token per row (each with its own sequence id and position), and each row's logits go to the
project's sampler, so seeds, logprobs, stops, structured output, streaming and cancel hold unchanged.

KV cache: llama.cpp keeps it inside its context. The context is made with `kv_unified = false`: every
sequence gets its own stream of `n_ctx_seq` cells, so attention for a row reads only that row's cells
(with one unified buffer every row attends over every sequence's cells: measured 2x slower at 64
sequences, MODELS.md). A row's place in the batch is just an index into `LlamaCppCache.seqs`: rows
leaving the batch move no data, and the llama.cpp-specific moves (`llama_memory_seq_cp` for the
samples of one prompt, `llama_memory_seq_rm` for a finished or cancelled row) stay in that class.
Prefix reuse keeps a sequence's state in RAM (`llama_state_seq_get_data`, as llama-server's prompt cache
does) and restores it into a free sequence, cut to the matched tokens: a cross-stream `llama_memory_seq_cp`
(kv_unified = false) copies a whole stream and only whole sequences, and a kept prefix parked in a spare
sequence would hold `n_ctx_seq` cells whatever its length. Long prompts are prefilled a chunk per step.

CPU kernels: llama-cpp-python is built with ggml's CPU backend as loadable modules, one per x86-64 variant:
`make install` builds this CPU's (scripts/install_llama_cpp_python.sh, scripts/llama_cpp_variants.py), a
Bento or image every one. `load_backend` picks the best variant this
CPU runs (ggml's own score), after checking in a child process that it decodes without crashing:
on an Intel AMX KVM guest a natively built ggml died at `ldtilecfg` (MODELS.md); a variant that
crashes is skipped for the next best. `LLAMACPP_CPU_VARIANT=<name>` forces one (e.g. `icelake`).
"""

from __future__ import annotations

import ctypes
import hashlib
import heapq
import json
import logging
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from graph.engine.runners.base import KeptRow, RowCache, Runner, as_id_set, swap_remove

log = logging.getLogger(__name__)

FlashAttn = Literal["auto", "on", "off"]
# llama.cpp's flash attention (runtime.flash_attn, graph/config.py, whose default this is): auto, which is on for
# ggml's CPU backend. Off measured 0.85-0.91x on's decode tokens/s (docs/performance.md, Intel AMX), so it stays
# on, though a prompt prefilled in chunks then gets log-probabilities up to 7e-2 away from the same prompt
# prefilled at once on the tiny GGUF (off: equal bit for bit; tests/graph/test_llamacpp_flash_attn.py).
FLASH_ATTN_DEFAULT: FlashAttn = "auto"

VARIANT_ENV = "LLAMACPP_CPU_VARIANT"
PROBE_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "inference-graph" / "llamacpp-variant.json"
)
_backend_lock = threading.Lock()
_backend: str | None = None  # the CPU variant loaded in this process
_backend_path: Path | None = None  # its module, when chosen by probes (not forced, not built in)
_checked: set[Path] = set()  # GGUF files known to decode on the loaded variant
_log_callback: Any = None  # kept alive: llama.cpp holds a pointer to it


def _lib_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "llama-cpp-python is not installed: `make install` builds it (scripts/install_llama_cpp_python.sh)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def cpu_variants() -> list[tuple[str, int, Path]]:
    """(name, ggml's score on this CPU, path) of each CPU backend module this build has, best first;
    score 0 = this CPU lacks an instruction the variant needs. Scored in this process: a variant's
    score function runs no vector code, so loading it to ask is safe."""
    import llama_cpp.llama_cpp  # noqa: F401  loads libggml-base, which the modules link to (they have no RPATH)

    found = []
    for path in sorted(_lib_dir().glob("libggml-cpu-*.so")):
        lib = ctypes.CDLL(str(path))
        lib.ggml_backend_score.restype = ctypes.c_int
        found.append((path.stem.removeprefix("libggml-cpu-"), int(lib.ggml_backend_score()), path))
    return sorted(found, key=lambda v: -v[1])


def _cpu_key() -> str:
    try:
        info = [
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("model name", "flags"))
        ]
    except OSError:
        info = []
    text = f"{sorted(set(info))}|{_lib_dir()}"
    for path in sorted(_lib_dir().glob("libggml-cpu-*.so")):
        text += f"|{path.name}:{path.stat().st_size}:{int(path.stat().st_mtime)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _probe(variant_path: str, gguf: str) -> int:
    """In a child process: load `variant_path`, decode a 32-token prompt and 4 tokens of `gguf`."""
    code = (
        "import sys; from graph.engine.runners.llamacpp_runner import probe_child; "
        "sys.exit(probe_child(sys.argv[1], sys.argv[2]))"
    )
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, variant_path, gguf], env=env, capture_output=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        return -1
    if done.returncode != 0:
        log.warning(
            "llama.cpp CPU variant %s failed its probe (exit %d): %s",
            Path(variant_path).name,
            done.returncode,
            done.stderr.decode(errors="replace")[-400:],
        )
    return done.returncode


def probe_child(variant_path: str, gguf: str) -> int:
    """In a child process: load `variant_path`, decode a 32-token prompt and 4 tokens of `gguf`."""
    _quiet_logs()
    _load_variant(Path(variant_path))
    runner = LlamaCppRunner(gguf, threads=1, n_seq=2, n_ctx_seq=64, check_backend=False)
    ids = torch.arange(32).remainder(runner.vocab_size).reshape(1, 32) + 1
    logits, pre = runner.prefill(ids, torch.ones(1, 32, dtype=torch.bool))
    cache = runner.new_cache(2, 64)
    cache.add_rows(pre, [0, 0], 8)
    for i in range(4):
        ids = logits.argmax(-1)[:1].repeat(2).reshape(2, 1)
        logits = runner.decode(ids, torch.tensor([[32 + i]] * 2), cache, 8)
    return 0 if bool(torch.isfinite(logits).all()) else 3


def _load_variant(path: Path) -> None:
    import llama_cpp.llama_cpp as L

    # The libggml that libllama uses (a wheel holds copies, not links: libggml.so and .so.0 would be two).
    with open("/proc/self/maps") as maps:
        loaded = {Path(line.split()[-1]) for line in maps if "/libggml.so" in line}
    ggml = ctypes.CDLL(str(next(iter(loaded), _lib_dir() / "libggml.so.0")))
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    if not ggml.ggml_backend_load(str(path).encode()):
        raise RuntimeError(f"llama.cpp: could not load CPU backend {path}")
    L.llama_backend_init()


def load_backend(gguf: str | Path | None = None, also: Sequence[str | Path] = ()) -> str:
    """Load ggml's CPU backend once per process; returns the variant's name (e.g. sapphirerapids).

    A build without loadable backends (ggml linked in) needs nothing: returns "built-in". The choice
    is the best-scoring variant that passed a probe decode of `gguf` and of every file in `also` (the
    other GGUF files this process will load), each in a child process; results are remembered in
    PROBE_CACHE per CPU, build, file and variant. One variant serves the whole process: a later call
    with another file probes that file on the loaded variant and raises a RuntimeError if it fails
    (ggml would die of SIGILL or SIGSEGV in this process), naming LLAMACPP_CPU_VARIANT and `also` as
    the ways out. LLAMACPP_CPU_VARIANT forces a variant without a probe."""
    global _backend, _backend_path
    files = list(dict.fromkeys(Path(g).resolve() for g in (gguf, *also) if g is not None))
    with _backend_lock:
        if _backend is not None:
            if _backend_path is not None and any(f not in _checked for f in files):
                cached = _read_probe_cache()
                try:
                    for f in files:
                        if f not in _checked and not _passes(cached, _backend, _backend_path, f):
                            raise RuntimeError(
                                f"llama.cpp: ggml's CPU variant {_backend}, loaded in this process for "
                                f"{sorted(str(c) for c in _checked) or 'its first model'}, fails its probe on {f} "
                                "(it would crash this process). One variant serves a process: load the models "
                                f"together (load_backend(first, also=[the others]) picks one all of them pass) or "
                                f"set {VARIANT_ENV} to a variant that runs every model (by score: "
                                f"{', '.join(v[0] for v in cpu_variants() if v[1] > 0)})"
                            )
                        _checked.add(f)
                finally:
                    _write_probe_cache(cached)
            return _backend
        _quiet_logs()
        variants = cpu_variants()
        if not variants:
            import llama_cpp.llama_cpp as L

            L.llama_backend_init()
            _backend = "built-in"
            return _backend
        forced = os.environ.get(VARIANT_ENV)
        if forced:
            match = [v for v in variants if v[0] == forced]
            if not match:
                raise RuntimeError(
                    f"{VARIANT_ENV}={forced}: no such variant; this build has {[v[0] for v in variants]}"
                )
            _load_variant(match[0][2])
            _backend = forced
            return _backend
        usable = [v for v in variants if v[1] > 0]
        cached = _read_probe_cache()
        try:
            chosen = next((v for v in usable if all(_passes(cached, v[0], v[2], f) for f in files)), None)
        finally:
            _write_probe_cache(cached)
        if chosen is None:
            raise RuntimeError(f"llama.cpp: no CPU variant of this build decodes {[str(f) for f in files]} on this CPU")
        _load_variant(chosen[2])
        _backend, _backend_path = chosen[0], chosen[2]
        _checked.update(files)
        return _backend


def _file_key(gguf: Path) -> str:
    return _cpu_key() + f"|{gguf}:{gguf.stat().st_size}"


def _passes(cached: dict[str, str], variant: str, path: Path, gguf: Path) -> bool:
    """Whether CPU variant `variant` (module `path`) decodes `gguf`: from PROBE_CACHE, else probed in
    a child process and remembered ("<file key>|<variant>": pass or fail; an entry "<file key>" alone,
    as earlier versions wrote it, names the best variant that passed that file)."""
    key = _file_key(gguf)
    seen = cached.get(f"{key}|{variant}")
    if seen is not None:
        return seen == "pass"
    if cached.get(key) == variant:
        return True
    ok = _probe(str(path), str(gguf)) == 0
    cached[f"{key}|{variant}"] = "pass" if ok else "fail"
    return ok


def _read_probe_cache() -> dict[str, str]:
    try:
        data = json.loads(PROBE_CACHE.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_probe_cache(cached: dict[str, str]) -> None:
    try:
        PROBE_CACHE.parent.mkdir(parents=True, exist_ok=True)
        on_disk = _read_probe_cache()  # another process may have added entries meanwhile
        tmp = PROBE_CACHE.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**on_disk, **cached}))
        tmp.replace(PROBE_CACHE)
    except OSError:
        pass


def _quiet_logs() -> None:
    """llama.cpp's log lines go to Python logging: warnings and errors only."""
    global _log_callback
    import llama_cpp.llama_cpp as L

    def forward(level: int, text: bytes, _user: Any) -> None:
        if level in (3, 4):  # GGML_LOG_LEVEL_WARN, _ERROR
            log.log(
                logging.WARNING if level == 2 else logging.ERROR,
                "llama.cpp: %s",
                text.decode(errors="replace").rstrip(),
            )

    _log_callback = L.llama_log_callback(forward)
    L.llama_log_set(_log_callback, ctypes.c_void_p(0))


class LlamaCppCache(RowCache):
    """Rows that are llama.cpp sequences: row i is sequence `seqs[i]`, holding `lens[i]` positions.

    A prefill returns one of these holding its prompts; `add_rows` moves them into the running batch
    (the second and later samples of a prompt get a copy: `llama_memory_seq_cp`) and frees the prompts
    no row continues. Rows leaving move nothing but ids in `seqs`; a removed row's sequence is cleared
    (`llama_memory_seq_rm`) and goes back to the runner's pool. A cache dropped with rows left (the
    scheduler's warm-up cache, a prefill whose rows all finished at their first token, a failed batch)
    gives them back when it is garbage-collected (freed at the runner's next call, on its thread).
    """

    def __init__(self, runner: LlamaCppRunner, row_capacity: int, capacity: int = 0) -> None:
        self.runner = runner
        self.row_capacity = row_capacity
        self.capacity = capacity or runner.n_ctx_seq
        self.seqs: list[int] = []
        self.lens = np.zeros(row_capacity, dtype=np.int64)
        self._finalizer = weakref.finalize(self, runner.release_later, self.seqs)

    @property
    def rows(self) -> int:  # type: ignore[override]
        return len(self.seqs)

    @property
    def length(self) -> int:
        """Positions held by the longest row (what the KV gauges report)."""
        return int(self.lens[: self.rows].max()) if self.seqs else 0

    def add_rows(self, prefill: LlamaCppCache, src_rows: Sequence[int], right_room: int) -> None:
        """Append rows `src_rows` of a prefill (an index may repeat: the samples of one prompt share
        its prefill); the prefill is empty afterwards."""
        if self.rows + len(src_rows) > self.row_capacity:
            raise ValueError("batch is full")
        runner = self.runner
        # Prompts no row continues are freed first, so the copies below find free sequences.
        runner.free_seqs([s for i, s in enumerate(prefill.seqs) if i not in set(src_rows)])
        taken: set[int] = set()
        for src in src_rows:
            seq = prefill.seqs[src]
            if src in taken:
                copy = runner.take_seq()
                runner.copy_seq(seq, copy)
                seq = copy
            taken.add(src)
            self.lens[self.rows] = prefill.lens[src]
            self.seqs.append(seq)
        prefill.seqs.clear()

    def keep_row(self, row: int, n: int) -> KeptRow:
        """Row `row`'s sequence saved to RAM (`llama_state_seq_get_data`, as llama-server's prompt cache
        does), to be resumed as its first `n` positions: kept prefixes hold no llama.cpp sequence."""
        return self.runner.save_seq(self.seqs[row], n)

    def remove_rows(self, rows: Sequence[int]) -> list[int]:
        """Drop `rows` (freeing their sequences); each is replaced by the current last row. Returns,
        for each remaining position, the old position of the row now there."""
        gone = [self.seqs[i] for i in set(rows)]

        def move(dst: int, src: int) -> None:
            self.seqs[dst] = self.seqs[src]
            self.lens[dst] = self.lens[src]

        order = swap_remove(self.rows, rows, move)
        del self.seqs[len(order) :]
        self.runner.free_seqs(gone)
        return order

    def truncate_row(self, row: int, length: int) -> None:
        """Drop row `row`'s cells from position `length` on (`llama_memory_seq_rm`): rejected drafts."""
        if length < self.lens[row]:
            self.runner.trim_seq(self.seqs[row], length)
            self.lens[row] = length


class LlamaCppKept(KeptRow):
    """A sequence's state (llama.cpp's own serialization of its cells: positions, keys, values) in RAM."""

    def __init__(self, runner: LlamaCppRunner, data: Any, tokens: int) -> None:
        self.runner, self.data, self.tokens, self.nbytes = runner, data, tokens, len(data)

    def resume(self, n: int, capacity: int) -> LlamaCppCache:
        """A fresh sequence with the saved state (`llama_state_seq_set_data`), cut to its first `n` positions."""
        return self.runner.restore_seq(self, min(n, self.tokens))


class LlamaCppRunner(Runner[LlamaCppCache]):
    """Forward passes of one GGUF model in one llama.cpp context of `n_seq` sequences."""

    def __init__(
        self,
        gguf: str | Path,
        *,
        threads: int | None = None,
        n_seq: int = 32,
        n_ctx_seq: int = 1024,
        n_batch: int = 512,
        eos_ids: Sequence[int] | None = None,
        check_backend: bool = True,
        flash_attn: FlashAttn = FLASH_ATTN_DEFAULT,
    ) -> None:
        """`gguf`: the model file, loaded as it is (mmap); `n_seq`: sequences the context holds (the
        node's batch rows plus one prefill's prompts share them); `n_ctx_seq`: positions per sequence
        (prompt + completion); `threads`: ggml's threads (None = all cores); `n_batch`: tokens per
        `llama_decode` call in a prefill; `flash_attn`: llama.cpp's flash attention (`flash_attn_type`:
        auto = llama.cpp decides, on for ggml's CPU backend; see FLASH_ATTN_DEFAULT)."""
        import importlib.metadata

        import llama_cpp.llama_cpp as L

        self._L = L
        variant = load_backend(gguf) if check_backend else _backend or "probe"
        self.gguf = str(gguf)
        mparams = L.llama_model_default_params()
        self._model: Any = L.llama_model_load_from_file(self.gguf.encode(), mparams)
        if not self._model:
            raise ValueError(f"llama.cpp could not load {self.gguf}")
        self._vocab: Any = L.llama_model_get_vocab(self._model)
        self.vocab_size: int = L.llama_vocab_n_tokens(self._vocab)
        self.num_layers: int = L.llama_model_n_layer(self._model)
        self.max_positions: int | None = L.llama_model_n_ctx_train(self._model)
        self.n_seq = n_seq
        self.n_ctx_seq = -(-n_ctx_seq // 256) * 256  # llama.cpp pads it so
        self.n_batch = n_batch
        # What a row can hold: the engine cuts prompts to fit it with their max_new_tokens.
        self.max_positions = self.n_ctx_seq
        threads = threads or os.cpu_count() or 1
        cparams = L.llama_context_default_params()
        cparams.n_ctx = self.n_seq * self.n_ctx_seq
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_seq
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = False
        cparams.no_perf = True
        cparams.flash_attn_type = {
            "auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO,
            "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }[flash_attn]
        self.flash_attn = flash_attn
        self._ctx: Any = L.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ValueError(f"llama.cpp could not make a context for {self.gguf} ({n_seq} x {n_ctx_seq} positions)")
        self._mem: Any = L.llama_get_memory(self._ctx)
        self._batch_cap = max(n_batch, n_seq)
        self._batch = L.llama_batch_init(self._batch_cap, 0, 1)
        # A heap: take_seq gives the lowest free id, so the rows' sequences stay few runs of consecutive ids
        # (_run: one ubatch, one pass over the weights, per run). With it, test_long_context's step-budget test
        # once flipped a near-tie token: flash attention's chunked-prefill rounding (FLASH_ATTN_DEFAULT), not it.
        self._free: list[int] = list(range(n_seq))
        self._to_release: list[list[int]] = []
        self._eos = [int(t) for t in eos_ids] if eos_ids else [int(L.llama_vocab_eos(self._vocab))]
        self.kv_heads: int = L.llama_model_n_head_kv(self._model)
        arch = self.meta("general.architecture") or ""
        self.head_dim_k = int(self.meta(f"{arch}.attention.key_length") or 0) or (
            L.llama_model_n_embd(self._model) // max(1, L.llama_model_n_head(self._model))
        )
        self.head_dim_v = int(self.meta(f"{arch}.attention.value_length") or 0) or self.head_dim_k
        desc = ctypes.create_string_buffer(128)
        L.llama_model_desc(self._model, desc, 128)
        self.description = desc.value.decode(errors="replace")
        version = importlib.metadata.version("llama-cpp-python")
        self.runtime_name = (
            f"llamacpp {self.description} (llama-cpp-python {version}, ggml CPU variant {variant}, "
            f"flash attention {flash_attn})"
        )
        self._closed = False

    def meta(self, key: str) -> str | None:
        buf: Any = ctypes.create_string_buffer(256)
        n = self._L.llama_model_meta_val_str(self._model, key.encode(), buf, 256)
        return buf.value.decode(errors="replace") if n >= 0 else None

    # -- the runner protocol --------------------------------------------------------------------
    def new_cache(self, row_capacity: int, capacity: int, left_room: int = 0) -> LlamaCppCache:
        return LlamaCppCache(self, row_capacity)

    def eos_ids(self) -> frozenset[int]:
        return as_id_set(self._eos)

    def kv_bytes_per_token(self) -> int:
        """One row, one position, all layers, keys + values (llama.cpp's f16 cache)."""
        return self.num_layers * self.kv_heads * (self.head_dim_k + self.head_dim_v) * 2

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, LlamaCppCache]:
        """Left-padded prompts `ids` [rows, p] with `mask` (True = real token) -> last-position
        logits [rows, vocab] (float32) and a cache whose row i is prompt i's new sequence."""
        self._reclaim()
        rows = ids.shape[0]
        cache = LlamaCppCache(self, rows)
        for _ in range(rows):
            cache.seqs.append(self.take_seq())
        cache.lens[:rows] = mask.sum(-1).numpy()
        tokens = [ids[i][mask[i]].tolist() for i in range(rows)]
        out = torch.empty(rows, self.vocab_size)
        entries = [
            (cache.seqs[i], pos, tok, i if pos == len(tokens[i]) - 1 else -1)
            for i in range(rows)
            for pos, tok in enumerate(tokens[i])
        ]
        try:
            self._run(entries, out)
        except Exception:
            self.free_seqs(cache.seqs)
            cache.seqs.clear()
            raise
        return out, cache

    def decode(self, ids: torch.Tensor, positions: torch.Tensor, cache: LlamaCppCache, right_room: int) -> torch.Tensor:
        """One token per row (`ids`: [rows, 1]) -> logits [rows, vocab] (float32), all rows in one
        `llama_decode`. Each row's position is its sequence's length (which equals `positions`)."""
        self._reclaim()
        b = cache.rows
        toks = ids.reshape(-1).tolist()
        lens = cache.lens[:b].tolist()
        out = torch.empty(b, self.vocab_size)
        self._run([(cache.seqs[i], lens[i], toks[i], i) for i in range(b)], out)
        cache.lens[:b] += 1
        return out

    chunked_prefill = True

    def prefill_chunk(
        self, ids: torch.Tensor, cache: LlamaCppCache | None, total: int
    ) -> tuple[torch.Tensor, LlamaCppCache]:
        """The next `k` tokens of one prompt, appended to its sequence (a new one for the first chunk)."""
        self._reclaim()
        if cache is None:
            cache = LlamaCppCache(self, 1)
            cache.seqs.append(self.take_seq())
        seq, past = cache.seqs[0], int(cache.lens[0])
        toks = ids.reshape(-1).tolist()
        out = torch.empty(1, self.vocab_size)
        last = len(toks) - 1
        self._run([(seq, past + j, tok, 0 if j == last else -1) for j, tok in enumerate(toks)], out)
        cache.lens[0] = past + len(toks)
        return out, cache

    def save_seq(self, seq: int, tokens: int) -> LlamaCppKept:
        """Sequence `seq`'s state copied to RAM, to resume its first `tokens` positions later."""
        L: Any = self._L  # its stubs want ctypes ints for sequence ids; plain ints convert
        size = L.llama_state_seq_get_size(self._ctx, seq)
        data = (ctypes.c_uint8 * size)()
        written = L.llama_state_seq_get_data(self._ctx, data, size, seq)
        if written != size:
            raise RuntimeError(f"llama.cpp: saving sequence {seq} wrote {written} of {size} bytes")
        return LlamaCppKept(self, data, tokens)

    def restore_seq(self, kept: LlamaCppKept, n: int) -> LlamaCppCache:
        """A one-row cache whose new sequence holds `kept`'s first `n` positions."""
        self._reclaim()
        L: Any = self._L  # its stubs want ctypes ints for sequence ids; plain ints convert
        seq = self.take_seq()
        try:
            if L.llama_state_seq_set_data(self._ctx, kept.data, len(kept.data), seq) == 0:
                raise RuntimeError(f"llama.cpp: could not restore a kept prefix into sequence {seq}")
            if not L.llama_memory_seq_rm(self._mem, seq, n, -1):
                raise RuntimeError(f"llama.cpp: could not cut sequence {seq} to {n} positions")
        except Exception:
            self.free_seqs([seq])
            raise
        cache = LlamaCppCache(self, 1)
        cache.seqs.append(seq)
        cache.lens[0] = n
        return cache

    multi_token_decode = True

    def decode_drafts(self, ids: Sequence[Sequence[int]], cache: LlamaCppCache, right_room: int) -> torch.Tensor:
        """Row i's tokens `ids[i]` (last token, then drafts) at its next positions, every row in the
        same `llama_decode` -> logits [sum of len(ids[i]), vocab] (float32), rows in order."""
        self._reclaim()
        entries = []
        for i, toks in enumerate(ids):
            seq, base, first = cache.seqs[i], int(cache.lens[i]), len(entries)
            entries.extend((seq, base + j, int(t), first + j) for j, t in enumerate(toks))
        out = torch.empty(len(entries), self.vocab_size)
        self._run(entries, out)
        cache.lens[: len(ids)] += np.array([len(t) for t in ids], dtype=np.int64)
        return out

    def sequence_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [p, vocab] at every position of one sequence `ids` [1, p] (for perplexity)."""
        self._reclaim()
        toks = ids.reshape(-1).tolist()
        out = torch.empty(len(toks), self.vocab_size)
        seq = self.take_seq()
        try:
            self._run([(seq, pos, tok, pos) for pos, tok in enumerate(toks)], out)
        finally:
            self.free_seqs([seq])
        return out

    # -- llama.cpp calls --------------------------------------------------------------------------
    def _run(self, entries: list[tuple[int, int, int, int]], out: torch.Tensor) -> None:
        """Decode (seq, position, token, output row or -1) entries, n_batch tokens per call; the
        logits of each entry with an output row land in out[row]."""
        L = self._L
        batch = self._batch
        n_vocab = self.vocab_size
        view = out.numpy()
        # In ascending sequence order: with kv_unified = false llama.cpp splits a batch into one ubatch (one
        # pass over the weights) per run of consecutive sequence ids in batch order, so rows whose sequences
        # came back from free_seqs in another order cost a forward each (64 rows: 1.4 s a step against 0.27).
        entries = sorted(entries, key=lambda e: (e[0], e[1]))
        for start in range(0, len(entries), self._batch_cap):
            chunk = entries[start : start + self._batch_cap]
            want = []
            for j, (seq, pos, tok, row) in enumerate(chunk):
                batch.token[j] = tok
                batch.pos[j] = pos
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq
                batch.logits[j] = row >= 0
                if row >= 0:
                    want.append((j, row))
            batch.n_tokens = len(chunk)
            rc = L.llama_decode(self._ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc}: {'no KV cache room' if rc == 1 else 'error'})")
            for j, row in want:
                view[row] = np.ctypeslib.as_array(L.llama_get_logits_ith(self._ctx, j), shape=(n_vocab,))

    def take_seq(self) -> int:
        """The lowest free sequence id (its cells are empty)."""
        if not self._free:
            self._reclaim()
        if not self._free:
            raise RuntimeError(f"llama.cpp: all {self.n_seq} sequences are in use")
        return heapq.heappop(self._free)

    def trim_seq(self, seq: int, length: int) -> None:
        """Clear sequence `seq`'s cells from position `length` on."""
        self._L.llama_memory_seq_rm(self._mem, seq, length, -1)

    def copy_seq(self, src: int, dst: int) -> None:
        self._L.llama_memory_seq_cp(self._mem, src, dst, -1, -1)

    def free_seqs(self, seqs: Sequence[int]) -> None:
        """Clear these sequences' cells and return them to the pool."""
        for seq in seqs:
            self._L.llama_memory_seq_rm(self._mem, seq, -1, -1)
            heapq.heappush(self._free, seq)

    def release_later(self, seqs: list[int]) -> None:
        """A dropped cache's finalizer (any thread): its sequences are freed at the next call."""
        if seqs:
            self._to_release.append(list(seqs))

    def _reclaim(self) -> None:
        while self._to_release:
            self.free_seqs(self._to_release.pop())

    def in_use(self) -> int:
        """Sequences held now (rows, prefills not yet added): for tests and stats."""
        return self.n_seq - len(self._free)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        L = self._L
        L.llama_batch_free(self._batch)
        L.llama_free(self._ctx)
        L.llama_model_free(self._model)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
