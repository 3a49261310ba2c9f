"""The two ONNX Runtime designs of docs/runtimes.md, measured side by side on one model.

    .venv/bin/python scripts/bench_onnx_designs.py [--model smollm2-135m-instruct] [--threads 2]

Design A: ORT GenAI's own continuous-batching `og.Engine` (static batching, its
`engine.static_batching.max_batch_size` set to the number of streams) on the builder's model.
Design B: the project's GenerationEngine (scheduler, sampler, KV cache) over graph/engine/runners/onnx_runner.py
on the same conversion plus the logits_index input. Both run greedy, the same prompts of exactly
--prompt-tokens tokens, --new-tokens new tokens each; tokens/s = generated tokens over wall time
(prefill included). Ratios within one run are what to read (2 shared cores). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def builder_graph(src: Path, dst: Path) -> None:
    """The builder's own graph (without the logits_index gather, which og does not feed)."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    g = model.graph
    for n in g.node:
        if "/graph/last_hidden3" in n.input:
            n.input[list(n.input).index("/graph/last_hidden3")] = next(
                x.input[0] for x in g.node if x.name == "/graph/Reshape"
            )
    keep = [n for n in g.node if not n.name.startswith("/graph/")]
    del g.node[:]
    g.node.extend(keep)
    inputs = [i for i in g.input if i.name != "logits_index"]
    del g.input[:]
    g.input.extend(inputs)
    for out in g.output:
        if out.name == "logits":
            out.type.tensor_type.shape.dim[1].dim_param = "sequence_length"
    onnx.save(model, str(dst))


def design_a(onnx_dir: Path, prompts: list[list[int]], new_tokens: int, threads: int) -> float:
    import numpy as np
    import onnxruntime_genai as og

    # ORT refuses external data reached through a symlink: hard links, in a folder on the store's disk.
    with tempfile.TemporaryDirectory(dir=onnx_dir.parent.parent.parent) as tmp:
        for f in onnx_dir.iterdir():
            if f.name not in ("genai_config.json", "model.onnx"):
                os.link(f, Path(tmp) / f.name)
        builder_graph(onnx_dir / "model.onnx", Path(tmp) / "model.onnx")
        cfg = json.loads((onnx_dir / "genai_config.json").read_text())
        cfg["engine"] = {"static_batching": {"max_batch_size": len(prompts)}}
        opts = cfg["model"]["decoder"]["session_options"]
        opts["intra_op_num_threads"] = threads
        (Path(tmp) / "genai_config.json").write_text(json.dumps(cfg))
        config = og.Config(tmp)
        config.clear_providers()
        model = og.Model(config)
        engine = og.Engine(model)
        buf = engine.create_event_buffer(1024)
        requests = []  # a Request that is garbage-collected is closed: keep every one
        for ids in prompts:
            req = engine.create_request()
            requests.append(req)
            turn = og.TurnOptions(req)
            turn.set_max_generated_tokens(new_tokens)
            turn.set_do_sample(False)
            req.begin_turn(np.asarray(ids, dtype=np.int32), turn)
        t0 = time.perf_counter()
        tokens = done = 0
        token_flag, finished = int(og.EngineEventFlags.TOKEN), int(og.EngineEventFlags.TURN_FINISHED)
        while done < len(prompts):
            for ev in engine.run(buf):
                flags = int(ev.flags)
                tokens += bool(flags & token_flag)
                done += bool(flags & finished)
        return tokens / (time.perf_counter() - t0)


def design_b(runner, tok, texts: list[str], new_tokens: int, threads: int) -> float:
    from graph.engine import GenerationEngine
    from graph.params import GenerationParams

    engine = GenerationEngine(runner, tok, name="b", max_batch_size=64, max_queue=1024, threads=threads)
    engine.warmup()
    params = GenerationParams(max_new_tokens=new_tokens)

    async def run() -> float:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(engine.generate(t, params) for t in texts))
        return sum(r[0].completion_tokens for r in results) / (time.perf_counter() - t0)

    try:
        return asyncio.run(run())
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--precision", default="int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,16,64")
    args = ap.parse_args()
    from graph.config import ModelRef, RuntimeConfig
    from graph.models import onnx_model
    from graph.models.runtimes import cpu_description
    from scripts.bench_node import fixed_prompts, model_dir
    from services.store import onnx_lookup

    path = model_dir(args.model)
    runtime = RuntimeConfig(backend="onnx", onnx_precision=args.precision)
    runner, tok = onnx_model.load(ModelRef(path=path), runtime, threads=args.threads, onnx_lookup=onnx_lookup)
    onnx_dir = Path(onnx_lookup(path, args.precision, None))
    levels = [int(c) for c in args.concurrency.split(",")]
    print(f"CPU: {cpu_description()}; {args.model} onnx {args.precision}, {args.threads} threads, greedy")
    print(f"{'streams':>8}{'A og.Engine':>14}{'B project engine':>18}{'B / A':>8}  (tokens/s)")
    for n in levels:
        texts = fixed_prompts(tok, n, args.prompt_tokens)
        ids = [tok(t, add_special_tokens=True)["input_ids"] for t in texts]
        a = design_a(onnx_dir, ids, args.new_tokens, args.threads)
        b = design_b(runner, tok, texts, args.new_tokens, args.threads)
        print(f"{n:>8}{a:>14.1f}{b:>18.1f}{b / a:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
