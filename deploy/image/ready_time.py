"""Seconds from starting a server command to its /readyz answering 200, then the server stopped (SIGTERM).

    python deploy/image/ready_time.py --port 3001 -- make serve PORT=3001
    python deploy/image/ready_time.py --port 3002 -- podman run --rm -p 3002:3000 inference_graph:latest

The container's time and `make serve`'s warm start (models already converted) on the same machine are
the two figures docs/deployment.md compares. /readyz is polled with a 2 s client timeout.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="HTTP port the command serves on")
    parser.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the server command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the server command after --")
    url = f"http://127.0.0.1:{args.port}/readyz"
    t0 = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ready = None
    try:
        while time.monotonic() - t0 < args.timeout and proc.poll() is None:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    ready = time.monotonic() - t0
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    if ready is None:
        sys.exit(f"{' '.join(command)}: /readyz not 200 within {args.timeout:.0f} s (exit code {proc.returncode})")
    print(f"{' '.join(command)}: /readyz 200 after {ready:.1f} s")


if __name__ == "__main__":
    main()
