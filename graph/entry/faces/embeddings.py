"""Embeddings on the HTTP faces: OpenAI's /v1/embeddings and the JSON face's /embed, both answered by
the classifier node's sentence encoder (the model the classifier scores with) in batched calls.

The encoder is listed in /v1/models as `classifier` (EMBEDDING_MODEL); vectors are mean-pooled and
unit length, so cosine similarity is a dot product. `encoding_format: base64` is the vector's float32
bytes, little-endian, as OpenAI sends them (the `openai` SDK asks for base64 and decodes it).
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Literal

from openai.types import CreateEmbeddingResponse
from openai.types import Embedding as OpenAIEmbedding
from openai.types.create_embedding_response import Usage
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from graph.entry.schemas import StrictRequest, Text, not_blank
from graph.errors import InvalidRequest
from graph.results import Embedding

EMBEDDING_MODEL = "classifier"
MAX_INPUTS = 256  # as /classify's `texts`


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request: text input only (token arrays are refused, naming `input`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    model: str
    input: str | list[str] = Field(description="A text or a list of texts (1..256).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, description="Only the encoder's own size (or unset).")
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts:
            raise ValueError("must be a text or a non-empty list of texts")
        if len(texts) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} texts per request (got {len(texts)})")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"input[{i}]: token arrays are not supported; send text")
            try:
                not_blank(t)
            except ValueError as exc:
                raise ValueError(f"input[{i}] {exc}") from None
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def parse_embedding_request(body: Any) -> EmbeddingRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("body: must be a JSON object", field="body")
    try:
        req = EmbeddingRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "body"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        raise InvalidRequest(f"{field}: {msg}", field=field) from None
    if req.model != EMBEDDING_MODEL:
        raise InvalidRequest(
            f"model: {req.model!r} does not embed; embeddings come from {EMBEDDING_MODEL!r}", field="model"
        )
    return req


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def openai_embeddings(req: EmbeddingRequest, out: list[Embedding]) -> CreateEmbeddingResponse:
    """The encoder's vectors as OpenAI's response (`usage.prompt_tokens`: the encoder's tokens)."""
    size = len(out[0].vector) if out else 0
    if req.dimensions is not None and req.dimensions != size:
        raise InvalidRequest(
            f"dimensions: {EMBEDDING_MODEL} gives {size}-dimensional vectors; leave dimensions out or set {size}",
            field="dimensions",
        )
    data = [
        OpenAIEmbedding(embedding=e.vector, index=i, object="embedding")
        if req.encoding_format == "float"
        else OpenAIEmbedding.model_construct(embedding=_base64(e.vector), index=i, object="embedding")
        for i, e in enumerate(out)
    ]
    tokens = sum(e.tokens for e in out)
    return CreateEmbeddingResponse(
        data=data, model=EMBEDDING_MODEL, object="list", usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
    )


class EmbedRequest(StrictRequest):
    """Embed texts with the classifier node's sentence encoder."""

    texts: list[Text] = Field(min_length=1, max_length=MAX_INPUTS, examples=[["What a lovely day!"]])

    @field_validator("texts")
    @classmethod
    def _not_blank(cls, v: list[str]) -> list[str]:
        for i, t in enumerate(v):
            try:
                not_blank(t)
            except ValueError as exc:
                raise ValueError(f"texts[{i}] {exc}") from None
        return v


class EmbedResponse(BaseModel):
    """/embed's answer: one unit-length vector per text, in order."""

    model: str = Field(default=EMBEDDING_MODEL, description="The encoder (the classifier node's).")
    dimensions: int
    embeddings: list[list[float]]
    prompt_tokens: int = Field(description="Tokens of every text in the encoder.")

    @classmethod
    def of(cls, out: list[Embedding]) -> EmbedResponse:
        return cls(
            dimensions=len(out[0].vector) if out else 0,
            embeddings=[e.vector for e in out],
            prompt_tokens=sum(e.tokens for e in out),
        )
