#!/bin/sh
# Moves the entry side of graph/ into one package, graph/entry/ (issue 33, item 8: the folder tree shows the
# processes), and rewrites every import and path that names the old places. Idempotent: run it again after
# merging a branch that still imports (or added files under) the old paths, and it moves and rewrites only
# what is left. Run from anywhere in the repository; it changes tracked files only (git mv, then perl -pi,
# sed with look-behind; then ruff sorts the imports), and prints what it moved and how many files it
# rewrote. Check with `git status`, `.venv/bin/ruff check .`, `.venv/bin/pyright` and
# `pytest tests/unit/test_layout.py`; a line the longer names push past 120 characters is fixed by hand.
#
# What stays at graph/'s top level: the node side's packages (engine/, models/), training/, and the modules
# both processes import, each saying why in its docstring ("Top level: ..."): config, params, errors,
# field_errors, results, chat_format, tools, response_format, wire, memory (the node's; the memory issue
# arranges the node side).
set -eu
cd "$(git rev-parse --show-toplevel)"

PACKAGES="faces policies chat"
MODULES="auth compose context k8s limits local metering nodes schemas streams tasks topology tracing"
NAMES=$(echo $PACKAGES $MODULES | tr ' ' '|')

mkdir -p graph/entry
if [ ! -f graph/entry/__init__.py ]; then
  cat > graph/entry/__init__.py <<'EOF'
"""The entry process: the faces (HTTP JSON, OpenAI, Anthropic, gRPC, chat), composition, the named graphs' step
kinds and policies, metering, topology and deployment; it calls the nodes (graph/engine, graph/models) as
services and never loads a model itself."""
EOF
  git add graph/entry/__init__.py
fi

moved=0
for m in $MODULES; do
  if [ -f "graph/$m.py" ]; then
    if [ -e "graph/entry/$m.py" ]; then
      echo "graph/$m.py and graph/entry/$m.py both exist: merge them by hand" >&2
      exit 1
    fi
    git mv "graph/$m.py" "graph/entry/$m.py"
    moved=$((moved + 1))
  fi
done
for p in $PACKAGES; do
  # file by file, so files another branch added under the old package after the first run move too
  for f in $(git ls-files "graph/$p"); do
    target="graph/entry/${f#graph/}"
    if [ -e "$target" ]; then
      echo "$f and $target both exist: merge them by hand" >&2
      exit 1
    fi
    mkdir -p "$(dirname "$target")"
    git mv "$f" "$target"
    moved=$((moved + 1))
  done
  [ -d "graph/$p" ] && find "graph/$p" -name __pycache__ -prune -exec rm -rf {} + && rmdir "graph/$p" 2>/dev/null || true
done

# Imports and dotted names (graph.compose -> graph.entry.compose; not self.graph.nodes, not graph.chat(...)),
# `from graph import tracing`, and paths in docs, comments and build files (graph/faces/ -> graph/entry/faces/).
files=$(git grep -lIE "(^|[^[:alnum:]_./-])graph[./]($NAMES)\b|from graph import ($NAMES)\b" -- . \
  ':!protos' ':!scripts/move_entry.sh' || true)
count=0
for f in $files; do
  NAMES="$NAMES" perl -pi -e '
    my $n = $ENV{NAMES};
    s{(?<![\w./-])graph\.($n)\b(?!\()}{graph.entry.$1}g;
    s{(?<![\w./-])graph/($n)(?=\.py\b|/|[\s`\x27"),;:]|$)}{graph/entry/$1}g;
    s{\bfrom graph import ($n)\b}{from graph.entry import $1}g;
  ' "$f"
  count=$((count + 1))
done
# graph.entry.* sorts elsewhere among a file's imports: ruff puts them back in order (and formats what moved)
if [ -x .venv/bin/ruff ]; then
  .venv/bin/ruff check --select I --fix --quiet . || true
  .venv/bin/ruff format --quiet graph services scripts tests clients || true
fi
echo "moved $moved files into graph/entry/; rewrote names in $count files"
