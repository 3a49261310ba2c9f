"""Document files (one JSON object per line: "body" and optional "meta"), read and checked line by line."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from graph.errors import ConfigError

KEYS = {"body", "meta"}


@dataclass(frozen=True)
class Document:
    body: str
    meta: str | None = None


@dataclass(frozen=True)
class DocumentFile:
    path: Path
    documents: list[Document]
    sha256: str


def read_documents(path: str | Path, *, what: str = "documents") -> DocumentFile:
    """Every line parsed and checked; a ConfigError names the file and line of the first bad one.

    Blank lines are skipped. A document is {"body": non-empty str, "meta": str or null (optional)}.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {p}: {exc.strerror or exc}", field=what) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text", field=what) from None
    docs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        docs.append(_parse_line(line, f"{p}:{number}", what))
    if not docs:
        raise ConfigError(f"{what}: {p} holds no documents", field=what)
    return DocumentFile(p, docs, hashlib.sha256(raw).hexdigest())


def _parse_line(line: str, where: str, what: str) -> Document:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})", field=what) from None
    if not isinstance(obj, dict):
        raise ConfigError(
            f'{where}: expected a JSON object {{"body": ..., "meta": ...}}, got {type(obj).__name__}', field=what
        )
    unknown = sorted(set(obj) - KEYS)
    if unknown:
        raise ConfigError(f'{where}: unknown key(s) {unknown}; a document has only "body" and "meta"', field=what)
    body, meta = obj.get("body"), obj.get("meta")
    if not isinstance(body, str) or not body.strip():
        raise ConfigError(f'{where}: "body" must be a non-empty string', field=what)
    if meta is not None and not isinstance(meta, str):
        raise ConfigError(f'{where}: "meta" must be a string (or left out), got {type(meta).__name__}', field=what)
    return Document(body=body, meta=(meta.strip() or None) if meta is not None else None)
