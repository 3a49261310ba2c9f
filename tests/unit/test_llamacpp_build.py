"""llama-cpp-python is built with the same portable flags by `make install` and inside every Bento image."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def script_flags() -> set[str]:
    text = (ROOT / "scripts" / "install_llama_cpp_python.sh").read_text()
    value = re.search(r'export CMAKE_ARGS="([^"]*)"', text, re.S)
    assert value, "scripts/install_llama_cpp_python.sh sets CMAKE_ARGS"
    return set(value.group(1).replace("\\\n", " ").split())


def test_bentofiles_build_llama_cpp_like_make_install() -> None:
    flags = script_flags()
    # Portable: every CPU variant as a loadable module, none tuned to the build machine.
    assert {"-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON", "-DGGML_NATIVE=OFF"} <= flags
    for name in ("bentofile.yaml", "bentofile.gpu.yaml", "bentofile.node.yaml"):
        spec = yaml.safe_load((ROOT / name).read_text())
        envs = {e["name"]: e["value"] for e in spec.get("envs", [])}
        assert set(envs.get("CMAKE_ARGS", "").split()) == flags, name
        assert "build-essential" in spec["docker"]["system_packages"], name


def test_requirements_pin_the_version_the_script_installs() -> None:
    reqs = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^llama-cpp-python==0\.3\.36$", reqs, re.M)
