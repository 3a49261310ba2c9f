"""The chat history database: SQLAlchemy 2 (asyncio) over SQLite or PostgreSQL, schema versioned.

Tables: `chat_conversations` (one per owner + user_id; `owner` is the API key id that created it,
None when keys are off), `chat_messages` (a turn = the user's message and the reply, stored together
in one transaction), `chat_schema_version` (the migrations applied) and `responses`
(stored /v1/responses answers, graph/entry/chat/responses.py). Migrations are a short list
of (version, step) below, applied in order on first use, under a PostgreSQL advisory lock so several
replicas starting at once apply each step once. We keep this small table instead of Alembic: two
tables, no migration scripts to generate, nothing to run by hand; a later schema change appends one
step (explicit DDL for that version) to MIGRATIONS.

A turn (`ChatStore.turn`) takes one connection from the pool for its PostgreSQL advisory lock, its reads
and its write, so N turns at once need N connections, never more: the pool (chat.pool_size) cannot run
dry by turns waiting on each other. A turn that waits past chat.pool_timeout_s for a connection is an
`Unavailable` (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from graph.entry.chat.schemas import StoredMessage
from graph.errors import ConfigError, Unavailable

metadata = MetaData()
schema_version = Table(
    "chat_schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied", Float, nullable=False),
)
conversations = Table(
    "chat_conversations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", String(256), nullable=False),
    Column("owner", String(128), nullable=True),
    Column("created", Float, nullable=False),
)
# One conversation per (user_id, owner), NULL owner included (a plain UNIQUE treats NULLs as distinct).
Index("ux_chat_conversation", conversations.c.user_id, func.coalesce(conversations.c.owner, ""), unique=True)
messages = Table(
    "chat_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("conversation_id", Integer, ForeignKey("chat_conversations.id", ondelete="CASCADE"), nullable=False),
    Column("turn", Integer, nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("model", String(64), nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("created", Float, nullable=False),
    UniqueConstraint("conversation_id", "turn", "role", name="ux_chat_message_turn"),
)

# Stored /v1/responses answers (graph/entry/chat/responses.py): one row per response, written in one statement,
# holding the conversation up to and including it (`messages`, JSON) and the Response object (JSON).
responses = Table(
    "responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(128), nullable=True),
    Column("previous_id", String(64), nullable=True),
    Column("model", String(128), nullable=False),
    Column("created", Float, nullable=False),
    Column("messages", Text, nullable=False),
    Column("response", Text, nullable=False),
)

MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "conversations and messages", lambda conn: metadata.create_all(conn, tables=[conversations, messages])),
    (2, "stored responses", lambda conn: metadata.create_all(conn, tables=[responses])),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
_MIGRATION_LOCK = 0x63686174  # "chat": the advisory lock id held while migrating


def async_url(url: str) -> str:
    """The URL with this package's async driver (sqlite+aiosqlite, postgresql+psycopg); SQLite's
    folder is created here."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        return u.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if u.get_backend_name() == "postgresql":
        return u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ConfigError(f"chat.database_url: unsupported database {u.get_backend_name()!r} (sqlite or postgresql)")


def migrate(conn: Connection) -> int:
    """Apply the migrations this database lacks; the schema version it is at now."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
    schema_version.create(conn, checkfirst=True)
    current = conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
    if current > SCHEMA_VERSION:
        raise ConfigError(f"chat database is at schema version {current}, newer than this code's {SCHEMA_VERSION}")
    for version, _, step in MIGRATIONS:
        if version > current:
            step(conn)
            conn.execute(insert(schema_version).values(version=version, applied=time.time()))
    return SCHEMA_VERSION


def _owner_is(owner: str | None) -> Any:
    return conversations.c.owner.is_(None) if owner is None else conversations.c.owner == owner


class ChatStore:
    """Conversations in the database at `url` (created and migrated on first use)."""

    def __init__(self, url: str, *, pool_size: int = 16, pool_timeout_s: float = 30.0) -> None:
        self.url = async_url(url)
        sqlite = self.url.startswith("sqlite")
        self.pool_size = pool_size
        pool = {} if sqlite else {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": pool_timeout_s}
        self.engine = create_async_engine(self.url, connect_args={"timeout": 30} if sqlite else {}, **pool)
        self.dialect = "sqlite" if sqlite else "postgresql"
        if sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._migrated = False
        self._migrate_lock = asyncio.Lock()
        self._turn_locks: weakref.WeakValueDictionary[tuple[str | None, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def ready(self) -> None:
        """Create or migrate the schema, once per process."""
        async with self._migrate_lock:
            if not self._migrated:
                async with self.engine.begin() as conn:
                    await conn.run_sync(migrate)
                self._migrated = True

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection; Unavailable (503 + Retry-After) when none frees up within the pool timeout."""
        conn = self.engine.connect()
        try:
            await conn.start()
        except PoolTimeout:
            raise Unavailable(
                f"chat database: all {self.pool_size} connections (chat.pool_size) stayed busy; retry shortly",
                retry_after_s=1,
            ) from None
        try:
            yield conn
        finally:
            await conn.close()

    @asynccontextmanager
    async def turn(self, owner: str | None, user_id: str) -> AsyncIterator[Turn]:
        """One turn at a time per conversation, in arrival order: an asyncio lock (FIFO) in this process
        and, on PostgreSQL, an advisory lock across every replica sharing the database, held on the one
        connection the turn's reads and write use."""
        key = (owner, user_id)
        lock = self._turn_locks.get(key)
        if lock is None:
            lock = self._turn_locks[key] = asyncio.Lock()
        async with lock:
            await self.ready()
            if self.dialect != "postgresql":
                yield Turn(self, None, owner, user_id)
                return
            k = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "big", signed=True)
            async with self._connect() as conn:
                await conn.execute(select(func.pg_advisory_lock(k)))
                await conn.commit()
                try:
                    yield Turn(self, conn, owner, user_id)
                finally:
                    await conn.rollback()  # whatever the turn left open
                    await conn.execute(select(func.pg_advisory_unlock(k)))
                    await conn.commit()

    async def history(self, owner: str | None, user_id: str) -> list[StoredMessage]:
        """The conversation's messages, oldest first ([] when there is none)."""
        await self.ready()
        async with self._connect() as conn:
            return await _history(conn, owner, user_id)

    async def add_turn(
        self,
        owner: str | None,
        user_id: str,
        message: str,
        reply: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> int:
        """Store one turn (the user's message and the reply) in one transaction; its turn number."""
        await self.ready()
        async with self._connect() as conn:
            turn = await _add_turn(conn, owner, user_id, message, reply, model, prompt_tokens, completion_tokens)
            await conn.commit()
            return turn

    async def forget(self, owner: str | None, user_id: str) -> int:
        """Delete the conversation and its messages; how many messages were deleted."""
        await self.ready()
        async with self._connect() as conn:
            gone = await _forget(conn, owner, user_id)
            await conn.commit()
            return gone

    async def count_messages(self) -> int:
        """Messages kept for everyone (operators, tests)."""
        await self.ready()
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(messages))).scalar_one())


class Turn:
    """One conversation under its turn lock: reads and the write on the lock's connection (PostgreSQL),
    or on pooled connections of their own (SQLite, whose lock is this process's)."""

    def __init__(self, store: ChatStore, conn: AsyncConnection | None, owner: str | None, user_id: str) -> None:
        self.store, self.conn, self.owner, self.user_id = store, conn, owner, user_id

    async def history(self) -> list[StoredMessage]:
        if self.conn is None:
            return await self.store.history(self.owner, self.user_id)
        out = await _history(self.conn, self.owner, self.user_id)
        await self.conn.commit()
        return out

    async def add(self, message: str, reply: str, model: str, prompt_tokens: int, completion_tokens: int) -> int:
        """Store the turn (the user's message and the reply) in one transaction; its turn number."""
        if self.conn is None:
            return await self.store.add_turn(
                self.owner, self.user_id, message, reply, model, prompt_tokens, completion_tokens
            )
        turn = await _add_turn(
            self.conn, self.owner, self.user_id, message, reply, model, prompt_tokens, completion_tokens
        )
        await self.conn.commit()
        return turn

    async def forget(self) -> int:
        if self.conn is None:
            return await self.store.forget(self.owner, self.user_id)
        gone = await _forget(self.conn, self.owner, self.user_id)
        await self.conn.commit()
        return gone


async def _history(conn: AsyncConnection, owner: str | None, user_id: str) -> list[StoredMessage]:
    rows = await conn.execute(
        select(messages.c.turn, messages.c.role, messages.c.content, messages.c.model, messages.c.created)
        .join(conversations, conversations.c.id == messages.c.conversation_id)
        .where(conversations.c.user_id == user_id, _owner_is(owner))
        .order_by(messages.c.turn, messages.c.id)
    )
    return [StoredMessage.model_validate(dict(r._mapping)) for r in rows]


async def _add_turn(
    conn: AsyncConnection,
    owner: str | None,
    user_id: str,
    message: str,
    reply: str,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> int:
    """The turn's two rows (uncommitted: the caller commits); its turn number."""
    cid = await _conversation(conn, owner, user_id)
    last = await conn.execute(select(func.max(messages.c.turn)).where(messages.c.conversation_id == cid))
    turn = (last.scalar() or 0) + 1
    row = {"conversation_id": cid, "turn": turn, "created": time.time()}  # every row has every key
    user = {"role": "user", "content": message, "model": None, "prompt_tokens": None, "completion_tokens": None}
    assistant = {
        "role": "assistant",
        "content": reply,
        "model": model,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }
    await conn.execute(insert(messages), [{**row, **user}, {**row, **assistant}])
    return turn


async def _forget(conn: AsyncConnection, owner: str | None, user_id: str) -> int:
    ids = select(conversations.c.id).where(conversations.c.user_id == user_id, _owner_is(owner))
    gone = await conn.execute(delete(messages).where(messages.c.conversation_id.in_(ids)))
    await conn.execute(delete(conversations).where(conversations.c.user_id == user_id, _owner_is(owner)))
    return int(gone.rowcount or 0)


async def _conversation(conn: AsyncConnection, owner: str | None, user_id: str) -> int:
    find = select(conversations.c.id).where(conversations.c.user_id == user_id, _owner_is(owner))
    found = (await conn.execute(find)).scalar()
    if found is not None:
        return int(found)
    try:
        async with conn.begin_nested():  # another replica may create it at the same moment
            await conn.execute(insert(conversations).values(user_id=user_id, owner=owner, created=time.time()))
    except IntegrityError:
        pass
    return int((await conn.execute(find)).scalar_one())


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL (readers do not block the writer) and foreign keys on, for every new SQLite connection."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
