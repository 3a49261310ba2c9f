"""API keys: who may call the graph, compared in constant time, with optional per-key rates.

Keys come from the config's `auth` section, which names where they are (an environment variable or
a file), never the keys themselves. Each key has a name (its `key_id`): `name:secret` entries give
it, a bare `secret` gets a short hash as its name. Every face calls `ApiKeys.authenticate` with the
caller's `Authorization` header; chat histories are scoped to the returned `Caller.key_id`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from graph.errors import ConfigError, GraphError, Overloaded

DEFAULT_OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics", "/playground", "/playground/static/*")


class AuthConfig(BaseModel):
    """`auth:` in a graph config. Keys are on when `keys_env` or `keys_file` is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys_env: str | None = Field(
        default=None, description="Environment variable holding the keys, comma-separated (`name:secret` or `secret`)."
    )
    keys_file: str | None = Field(
        default=None, description="File with one key per line (`name:secret` or `secret`; # comments)."
    )
    open_paths: list[str] = Field(
        default_factory=lambda: list(DEFAULT_OPEN_PATHS),
        description="HTTP paths answered without a key (exact paths; a trailing * matches a prefix).",
    )
    requests_per_minute: int | None = Field(default=None, ge=1, le=1_000_000, description="Per key; None = no limit.")
    tokens_per_minute: int | None = Field(
        default=None, ge=1, le=100_000_000, description="Generated tokens per key per minute; None = no limit."
    )

    @model_validator(mode="after")
    def _one_source(self) -> AuthConfig:
        if self.keys_env and self.keys_file:
            raise ValueError("auth: give keys_env or keys_file, not both")
        if (self.requests_per_minute or self.tokens_per_minute) and not (self.keys_env or self.keys_file):
            raise ValueError("auth: rates are per key; set keys_env or keys_file")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.keys_env or self.keys_file)


class Caller(BaseModel):
    """Who is calling: the key's name, or None when keys are off."""

    model_config = ConfigDict(frozen=True)

    key_id: str | None = None


class Unauthorized(GraphError):
    """No key, or a key that is not one of the configured keys. 401 (the issue asks for it)."""

    status = 401
    kind = "unauthorized"


class RateLimited(Overloaded):
    """A key went over its requests or tokens per minute. 429 with Retry-After."""

    kind = "rate_limited"


def parse_keys(text: str, source: str) -> dict[str, bytes]:
    """`name:secret` or `secret` entries (comma- or newline-separated) -> {key_id: secret}."""
    keys: dict[str, bytes] = {}
    for n, raw in enumerate(text.replace(",", "\n").splitlines(), 1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        name, sep, secret = entry.partition(":")
        if not sep:
            name, secret = hashlib.sha256(entry.encode()).hexdigest()[:12], entry
        if len(secret) < 16:
            raise ConfigError(f"{source}: entry {n}: a key must be at least 16 characters")
        if name in keys:
            raise ConfigError(f"{source}: entry {n}: key name {name!r} appears twice")
        keys[name] = secret.encode()
    return keys


class _Window:
    """Events per key in the last 60 s (a sliding window)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.events: dict[str, deque[tuple[float, int]]] = {}

    def used(self, key: str, now: float) -> tuple[int, float]:
        """(amount used in the window, seconds until the oldest event leaves it)."""
        q = self.events.setdefault(key, deque())
        while q and q[0][0] <= now - 60:
            q.popleft()
        return sum(n for _, n in q), (q[0][0] + 60 - now if q else 0.0)

    def add(self, key: str, now: float, n: int) -> None:
        self.events.setdefault(key, deque()).append((now, n))


class ApiKeys:
    """The configured keys and rates. With keys off every call is allowed as Caller(key_id=None)."""

    def __init__(self, config: AuthConfig, environ: Mapping[str, str] = os.environ) -> None:
        self.config = config
        self._keys: dict[str, bytes] = {}
        if config.keys_env:
            value = environ.get(config.keys_env)
            if not value:
                raise ConfigError(f"auth.keys_env: environment variable {config.keys_env} is not set or empty")
            self._keys = parse_keys(value, f"auth.keys_env ({config.keys_env})")
        elif config.keys_file:
            path = Path(config.keys_file)
            if not path.is_file():
                raise ConfigError(f"auth.keys_file: {config.keys_file} is not a file")
            self._keys = parse_keys(path.read_text(), f"auth.keys_file ({config.keys_file})")
        if config.enabled and not self._keys:
            raise ConfigError("auth: keys are configured but none was found (an empty door would be open)")
        self._lock = threading.Lock()
        self._requests = _Window(config.requests_per_minute) if config.requests_per_minute else None
        self._tokens = _Window(config.tokens_per_minute) if config.tokens_per_minute else None

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def is_open(self, path: str) -> bool:
        """Whether an HTTP path is answered without a key."""
        return any(path.startswith(p[:-1]) if p.endswith("*") else path == p for p in self.config.open_paths)

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller of a request with this `Authorization` header; Unauthorized if keys are on
        and it carries none of them. Every key is compared (constant time, no early exit)."""
        if not self.enabled:
            return Caller()
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("authorization: send `Authorization: Bearer <key>`", field="authorization")
        given = token.strip().encode()
        found: str | None = None
        for name, secret in self._keys.items():
            if hmac.compare_digest(given, secret):
                found = name
        if found is None:
            raise Unauthorized("authorization: this key is not valid", field="authorization")
        return Caller(key_id=found)

    def admit(self, caller: Caller, now: float | None = None) -> None:
        """Count one request of `caller`; RateLimited if the key is over a rate."""
        if caller.key_id is None or not (self._requests or self._tokens):
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            for window, what in ((self._requests, "requests"), (self._tokens, "generated tokens")):
                if window is None:
                    continue
                used, wait = window.used(caller.key_id, now)
                if used >= window.limit:
                    raise RateLimited(
                        f"key {caller.key_id!r} used {used} {what} in the last minute (limit {window.limit})",
                        retry_after_s=max(1, int(wait + 0.999)),
                    )
            if self._requests is not None:
                self._requests.add(caller.key_id, now, 1)

    def charge(self, caller: Caller, tokens: int, now: float | None = None) -> None:
        """Count tokens generated for `caller` (after the fact: the next request pays for an overrun)."""
        if caller.key_id is None or self._tokens is None or tokens <= 0:
            return
        with self._lock:
            self._tokens.add(caller.key_id, time.monotonic() if now is None else now, tokens)
