"""Put every embedded model a graph config uses into the BentoML model store, converted once (idempotent);
then the ONNX conversion of each generator whose runtime resolves to the onnx backend (also once; with
--every-cpu-kind, the ones other CPU kinds' hosts would load too)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graph.config import DEFAULT_CONFIG, load_config
from graph.errors import GraphError


def embedded_names(config_path: str) -> list[str]:
    """Embedded model names referenced by the config's generators and classifier, in order."""
    cfg = load_config(config_path)
    refs = [node.model for node in cfg.generators.values()] + [cfg.classifier.model]
    return list(dict.fromkeys(r.embedded for r in refs if r.embedded))


def prepare_onnx(config_path: str, *, every_cpu_kind: bool = False) -> int:
    """Convert (once) the model of every generator whose runtime resolves to backend onnx on this CPU;
    with `every_cpu_kind`, also the conversions auto picks on other CPU kinds (what a Bento carries);
    returns how many conversions are ready."""
    import logging

    from graph.models.loading import onnx_variants, resolve_model_dir, resolve_runtime
    from services.store import embedded_lookup, onnx_lookup, store_lookup

    logging.getLogger("graph.models.loading").setLevel(logging.ERROR)  # the node logs the choice at start-up
    ready = 0
    for gname, node in load_config(config_path).generators.items():
        runtime = resolve_runtime(node.runtime, name=gname, model=node.model)  # auto may resolve to hybrid
        sides = [runtime.small, runtime.large] if runtime.backend == "hybrid" else [runtime]  # hybrid: both engines
        resolved = [resolve_runtime(side, name=gname, model=node.model) for side in sides]
        variants = [(r.onnx_precision, r.onnx_accuracy_level) for r in resolved if r.backend == "onnx"]
        if every_cpu_kind:
            variants = list(dict.fromkeys(variants + onnx_variants(node.runtime, node.model)))
        if not variants:
            continue
        hf_dir = resolve_model_dir(node.model, store_lookup=store_lookup, embedded_lookup=embedded_lookup)
        if not Path(hf_dir).is_dir():
            print(f"{gname}: backend onnx needs a local folder, {hf_dir} is a hub id: the node will say so", flush=True)
            continue
        for precision, level in variants:
            t0 = time.perf_counter()
            path = onnx_lookup(hf_dir, precision, level, progress=lambda m: print(m, flush=True))
            print(f"{gname}: onnx {precision} ready: {path} ({time.perf_counter() - t0:.1f} s)", flush=True)
            ready += 1
    return ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="graph config YAML")
    parser.add_argument("--force", action="store_true", help="convert again even if already in the store")
    parser.add_argument(
        "--every-cpu-kind",
        action="store_true",
        help="also the ONNX conversions `runtime: {backend: auto}` loads on other CPU kinds than this one "
        "(AVX2-only hosts), so a Bento built here carries them (make bento)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        names = embedded_names(args.config)
        from graph.models import embedded
        from services.store import prepare

        for name in names:
            embedded.get_embedded(name)
            t0 = time.perf_counter()
            path, converted = prepare(name, force=args.force, progress=lambda m: print(m, flush=True))
            if converted:
                state = "converted"
            elif embedded.needs_conversion(name):
                state = "already in the store (same fingerprint)"
            else:
                state = "ready folder, used in place"
            print(f"{name}: {state}: {path} ({time.perf_counter() - t0:.1f} s)", flush=True)
        onnx_ready = prepare_onnx(args.config, every_cpu_kind=args.every_cpu_kind)
    except GraphError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(
        f"{len(names)} embedded model(s) and {onnx_ready} ONNX conversion(s) ready for {args.config} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
