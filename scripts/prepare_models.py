"""Put every embedded model a graph config uses into the BentoML model store, converted once (idempotent)."""

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="graph config YAML")
    parser.add_argument("--force", action="store_true", help="convert again even if already in the store")
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
    except GraphError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(f"{len(names)} embedded model(s) ready for {args.config} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
