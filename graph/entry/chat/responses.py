"""Stored /v1/responses answers, in the chat database (graph/entry/chat/store.py's `responses` table).

A stored response is one row: its id, the API key that made it (`owner`), the conversation up to and
including its answer, and the Response object. The row is written by one INSERT in one transaction, so a
process killed while storing leaves it whole or absent. A response is only found under its owner's key:
another key's lookup is the same "not found" as a response that never existed.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, insert, select

from graph.chat_format import ChatMessage
from graph.entry.chat.store import ChatStore, responses


class StoredResponse(BaseModel):
    """One stored response: the conversation it ends and the Response object as it was answered."""

    model_config = ConfigDict(frozen=True)

    id: str
    owner: str | None
    previous_id: str | None
    model: str
    created: float
    messages: list[ChatMessage]
    response: dict[str, Any]


def _owned(owner: str | None) -> Any:
    return responses.c.owner.is_(None) if owner is None else responses.c.owner == owner


class ResponseStore:
    """Responses in the chat database (the same engine and pool as the chat histories)."""

    def __init__(self, store: ChatStore) -> None:
        self.store = store

    async def save(self, item: StoredResponse) -> None:
        """Store a response: one INSERT, committed alone (whole or absent)."""
        await self.store.ready()
        row = {
            "id": item.id,
            "owner": item.owner,
            "previous_id": item.previous_id,
            "model": item.model,
            "created": item.created or time.time(),
            "messages": json.dumps([m.model_dump() for m in item.messages]),
            "response": json.dumps(item.response),
        }
        async with self.store.engine.begin() as conn:
            await conn.execute(insert(responses).values(**row))

    async def get(self, owner: str | None, response_id: str) -> StoredResponse | None:
        """The response `response_id` made under `owner`'s key, or None (absent, or another key's)."""
        await self.store.ready()
        async with self.store.engine.connect() as conn:
            found = (await conn.execute(select(responses).where(responses.c.id == response_id, _owned(owner)))).first()
        if found is None:
            return None
        row = found._mapping
        return StoredResponse(
            id=row["id"],
            owner=row["owner"],
            previous_id=row["previous_id"],
            model=row["model"],
            created=row["created"],
            messages=[ChatMessage.model_validate(m) for m in json.loads(row["messages"])],
            response=json.loads(row["response"]),
        )

    async def delete(self, owner: str | None, response_id: str) -> bool:
        """Delete the response (only its owner can); whether there was one."""
        await self.store.ready()
        async with self.store.engine.begin() as conn:
            gone = await conn.execute(delete(responses).where(responses.c.id == response_id, _owned(owner)))
        return bool(gone.rowcount)

    async def count(self) -> int:
        await self.store.ready()
        async with self.store.engine.connect() as conn:
            return len((await conn.execute(select(responses.c.id))).all())
