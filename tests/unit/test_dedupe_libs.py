"""deploy/image/dedupe_libs.py on real shared libraries: the byte-identical copies a wheel makes of one library
under its versioned names become symlinks to the longest name, a different library beside them is left alone, and
what ctypes opens by the short name still loads."""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
from pathlib import Path

from tests.server import ROOT


def _module():
    spec = importlib.util.spec_from_file_location("dedupe_libs", ROOT / "deploy" / "image" / "dedupe_libs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_versioned_copies_become_symlinks_and_still_load(tmp_path: Path) -> None:
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    ggml = next(p for p in sorted(lib.glob("libggml-base.so*")) if not p.is_symlink())
    other = lib / "libggml.so.0"
    folder = tmp_path / "pkg" / "lib"
    folder.mkdir(parents=True)
    names = ["libggml-base.so", "libggml-base.so.0", "libggml-base.so.0.25.3"]
    for name in names:
        shutil.copyfile(ggml, folder / name)
    shutil.copyfile(other, folder / "libggml.so.0")
    (folder / "notalib.txt").write_bytes(ggml.read_bytes())  # same bytes, not a library name: kept
    size = ggml.stat().st_size

    replaced, saved = _module().dedupe(tmp_path)

    assert (replaced, saved) == (2, 2 * size)
    assert not (folder / "libggml-base.so.0.25.3").is_symlink()
    for name in names[:2]:
        assert (folder / name).is_symlink() and (folder / name).readlink() == Path("libggml-base.so.0.25.3")
        assert (folder / name).read_bytes() == ggml.read_bytes()
    assert not (folder / "libggml.so.0").is_symlink() and not (folder / "notalib.txt").is_symlink()
    assert ctypes.CDLL(str(folder / "libggml-base.so")) is not None
    assert _module().dedupe(tmp_path) == (0, 0)  # idempotent
