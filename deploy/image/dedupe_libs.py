"""Replace the byte-identical copies of a shared library under its versioned names by symlinks.

    python3.11 dedupe_libs.py /app/.venv

A wheel cannot hold symlinks, so a library installed as libllama.so -> libllama.so.0 -> libllama.so.0.5.0 arrives
as three copies of the same file. In each folder, the files named lib*.so* with the same bytes keep one copy (the
longest name, the real soname chain's end) and the others become relative symlinks to it: what the dynamic
loader and ctypes open is unchanged. Run in the image's build stage (deploy/image/Containerfile).
"""

from __future__ import annotations

import hashlib
import sys
from collections import defaultdict
from pathlib import Path


def dedupe(root: Path) -> tuple[int, int]:
    """(files replaced by symlinks, bytes saved) under `root`."""
    groups: dict[tuple[Path, int, str], list[Path]] = defaultdict(list)
    for path in root.rglob("lib*.so*"):
        if path.is_symlink() or not path.is_file():
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        groups[(path.parent, path.stat().st_size, digest)].append(path)
    replaced = saved = 0
    for (_, size, _), paths in groups.items():
        if len(paths) < 2:
            continue
        keep = max(paths, key=lambda p: (len(p.name), p.name))
        for path in paths:
            if path == keep:
                continue
            path.unlink()
            path.symlink_to(keep.name)
            replaced += 1
            saved += size
    return replaced, saved


def main() -> None:
    root = Path(sys.argv[1])
    replaced, saved = dedupe(root)
    print(f"dedupe_libs: {replaced} library copies under {root} made symlinks, {saved / 1e6:.1f} MB saved")


if __name__ == "__main__":
    main()
