"""The architecture holds: no import cycle in graph/, graph/ never imports bentoml, a module has one job, the folder
tree shows the processes (graph/entry/ the entry's, graph/engine/ and graph/models/ the node's)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graph"
MODULE_FOLDERS = ("graph", "services")
# A module says its one job in the first sentence of its docstring; more than this is two jobs or a story.
MAX_JOB_CHARS = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module this file imports (module level and inside functions alike)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def graph_modules() -> dict[str, set[str]]:
    files = {module_name(p): p for p in GRAPH.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in files and m != name} for name, path in files.items()}


def test_no_import_cycle_in_graph():
    deps = graph_modules()
    # A package's __init__ re-exporting its own modules is not a cycle of the architecture.
    deps = {m: {d for d in ds if not m.startswith(d + ".")} for m, ds in deps.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for dep in sorted(deps[module]):
            visit(dep, path + [module])
        done.add(module)

    for module in sorted(deps):
        visit(module, [])
    assert "graph.engine.generation" in deps and "graph.models.loading" in deps  # the walk saw the packages


def package_of(module: str) -> str:
    """The package a module belongs to: graph.engine for graph.engine.runners.base, graph.config for itself;
    in graph.entry, its sub-packages and modules (graph.entry.policies, graph.entry.auth): the config reads
    some of them (its auth, limits and policies sections) and the rest of the entry reads the config."""
    parts = module.split(".")
    return ".".join(parts[:3] if parts[:2] == ["graph", "entry"] else parts[:2])


def test_no_import_cycle_between_packages():
    """Packages depend one way: graph.models builds runners on graph.engine and never the reverse, the
    policies read the config through a protocol (graph.entry.policies.config.WithPolicies), and so on."""
    edges: dict[str, dict[str, tuple[str, str]]] = {}
    for module, ds in graph_modules().items():
        for dep in ds:
            a, b = package_of(module), package_of(dep)
            if a != b:
                edges.setdefault(a, {}).setdefault(b, (module, dep))
    done: set[str] = set()

    def visit(package: str, path: list[str]) -> None:
        if package in path:
            cycle = path[path.index(package) :] + [package]
            why = [" imports ".join(edges[a][b]) for a, b in zip(cycle, cycle[1:])]
            raise AssertionError("package cycle: " + " -> ".join(cycle) + " (" + "; ".join(why) + ")")
        if package in done:
            return
        for dep in sorted(edges.get(package, {})):
            visit(dep, path + [package])
        done.add(package)

    for package in sorted(edges):
        visit(package, [])
    assert "graph.engine" in edges and "graph.models" in edges


ENTRY = "graph.entry"
NODE_SIDE = ("graph.engine", "graph.models")
# The one shared module that reads the entry's code: the config model holds the entry's sections.
SHARED_READS_ENTRY = {"graph.config": "the config holds the entry's sections (auth, limits, policies)"}


def test_graph_top_level_is_packages_and_shared_modules_that_say_why():
    """graph/'s top level: the entry (graph/entry/), the node side (engine/, models/), training/, and modules
    both sides import, each saying why it sits there in a docstring paragraph starting `Top level:`."""
    packages = sorted(p.name for p in GRAPH.iterdir() if (p / "__init__.py").is_file())
    assert {"entry", "engine", "models"} <= set(packages), packages
    unexplained = [
        p.name
        for p in sorted(GRAPH.glob("*.py"))
        if p.name != "__init__.py" and "\nTop level: " not in "\n" + (ast.get_docstring(ast.parse(p.read_text())) or "")
    ]
    assert unexplained == [], f"loose modules at graph/'s top level without a `Top level:` reason: {unexplained}"


def test_the_node_side_never_imports_the_entry():
    """The node process (graph/engine, graph/models) and the shared modules never import graph/entry/ (but the
    config, for the entry's sections): a node does not load the faces, the policies or the composition."""
    offenders = []
    for module, deps in graph_modules().items():
        node_side = module.startswith(NODE_SIDE)
        shared = module.count(".") == 1 and module not in (ENTRY, *NODE_SIDE) and module not in SHARED_READS_ENTRY
        if node_side or shared:
            offenders += [f"{module} imports {d}" for d in sorted(deps) if d == ENTRY or d.startswith(ENTRY + ".")]
    assert offenders == []
    assert "graph.entry.compose" in graph_modules() and "graph.entry.policies.steps" in graph_modules()


def test_graph_never_imports_bentoml():
    offenders = [
        str(p.relative_to(ROOT))
        for p in GRAPH.rglob("*.py")
        if any(m == "bentoml" or m.startswith("bentoml.") for m in imports_of(p))
    ]
    assert offenders == []


def modules() -> list[Path]:
    return sorted(p for folder in MODULE_FOLDERS for p in (ROOT / folder).rglob("*.py"))


def job_of(path: Path) -> str | None:
    """The first paragraph of the module's docstring, on one line (None without a docstring)."""
    doc = ast.get_docstring(ast.parse(path.read_text()))
    return None if doc is None else " ".join(doc.split("\n\n", 1)[0].split())


def test_every_module_says_its_one_job_first():
    """A module has one job and its docstring's first paragraph says it, in one short statement.

    This is what the old 300-line cap stood for: split a module when it has two jobs, not when it
    crosses a line count."""
    unsaid = {str(p.relative_to(ROOT)): job_of(p) for p in modules()}
    missing = [name for name, job in unsaid.items() if not job]
    assert missing == [], f"no docstring saying the module's job: {missing}"
    long = {name: len(job) for name, job in unsaid.items() if job and len(job) > MAX_JOB_CHARS}
    assert long == {}, f"first paragraph over {MAX_JOB_CHARS} characters (one job, said briefly): {long}"
    unended = [name for name, job in unsaid.items() if job and not job.rstrip(")").endswith((".", ":", "!", "?"))]
    assert unended == [], f"first paragraph is not a finished statement: {unended}"


def test_no_module_imports_another_modules_private_names():
    """A name with a leading underscore stays in its module: importing it elsewhere means the split
    between the two modules is in the wrong place."""
    offenders = []
    for p in modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in MODULE_FOLDERS:
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    offenders.append(f"{p.relative_to(ROOT)}: from {node.module} import {', '.join(private)}")
    assert offenders == []


def test_every_runner_implements_the_protocol_and_the_engine_never_probes_attributes():
    """graph/engine/runners/: each backend's runner subclasses base.Runner (and its cache base.RowCache);
    the engine's modules tell backends apart by that protocol, never with hasattr/getattr probes."""
    import inspect

    from graph.engine.runners.base import RowCache, Runner

    runners = ROOT / "graph" / "engine" / "runners"
    found: dict[str, list[str]] = {}
    for path in sorted(runners.glob("*_runner.py")):
        tree = ast.parse(path.read_text())
        found[path.name] = [
            n.name
            for n in tree.body
            if isinstance(n, ast.ClassDef) and any("Runner" in ast.unparse(b) for b in n.bases)
        ]
        assert found[path.name], f"{path.name}: no class derived from Runner"
    assert {"torch_runner.py", "onnx_runner.py"} <= set(found)

    from graph.engine.runners.onnx_runner import OnnxKVCache, OnnxRunner
    from graph.engine.runners.torch_cache import BatchKVCache
    from graph.engine.runners.torch_runner import ModelRunner

    for cls, base in ((ModelRunner, Runner), (OnnxRunner, Runner), (BatchKVCache, RowCache), (OnnxKVCache, RowCache)):
        assert issubclass(cls, base) and not inspect.isabstract(cls), cls
    engine = ROOT / "graph" / "engine"
    for path in [*engine.glob("*.py"), *runners.glob("*.py")]:
        text = path.read_text()
        assert 'hasattr(model, "prefill")' not in text and 'getattr(runner, "' not in text, path.name
