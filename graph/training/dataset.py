"""Documents -> token ids: control prefix (meta, capped) + body (capped) + end of sequence; loss on the body only."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from graph.training.documents import Document

IGNORE = -100  # label of tokens the loss skips (prefix and padding)


@dataclass(frozen=True)
class Encoded:
    """One document: ids of the prefix (specials + control prefix) and of the body (+ eos)."""

    prefix: list[int]  # with its meta; what a serving prompt carrying this control code tokenizes to
    bare: list[int]  # without meta (only what the tokenizer adds to any prompt, e.g. a BOS)
    body: list[int]
    meta: str | None

    def example(self, with_meta: bool) -> dict[str, list[int]]:
        head = self.prefix if with_meta and self.meta is not None else self.bare
        ids = head + self.body
        return {"input_ids": ids, "labels": [IGNORE] * len(head) + self.body}


class DocumentEncoder:
    """Tokenizes documents the way the serving engine tokenizes a plain prompt (add_special_tokens=True)."""

    def __init__(
        self, tokenizer: Any, *, control_prefix: Callable[[str], str], max_meta_len: int, max_body_len: int
    ) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no end-of-sequence token")
        self.tokenizer = tokenizer
        self.control_prefix = control_prefix
        self.max_meta_len = max_meta_len
        self.max_body_len = max_body_len
        self.bare = self._ids("", special=True)

    def _ids(self, text: str, *, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def meta_text(self, meta: str | None) -> str | None:
        """The meta cut to max_meta_len tokens (None when there is none or the cap is 0)."""
        if not meta or self.max_meta_len == 0:
            return None
        ids = self._ids(meta, special=False)
        if len(ids) > self.max_meta_len:
            meta = self.tokenizer.decode(ids[: self.max_meta_len]).strip()
        return meta or None

    def prompt(self, meta: str | None) -> str:
        """The serving prompt that carries this control code ("" without one)."""
        text = self.meta_text(meta)
        return self.control_prefix(text) if text else ""

    def encode(self, doc: Document) -> Encoded:
        meta = self.meta_text(doc.meta)
        prefix = self._ids(self.control_prefix(meta), special=True) if meta else self.bare
        body = self._ids(doc.body, special=False)[: self.max_body_len] + [self.tokenizer.eos_token_id]
        return Encoded(prefix=prefix, bare=self.bare, body=body, meta=meta)


class DocumentDataset:
    """A torch-style dataset; training draws "leave the meta out" anew at every access, with
    probability ignore_meta_prob; validation (fixed=True) draws once, so its loss is comparable."""

    def __init__(self, encoded: Sequence[Encoded], *, ignore_meta_prob: float, seed: int, fixed: bool) -> None:
        self.encoded = list(encoded)
        self.ignore_meta_prob = ignore_meta_prob
        self._rng = random.Random(seed)
        self._fixed = [self._keep_meta() for _ in self.encoded] if fixed else None

    def _keep_meta(self) -> bool:
        return self._rng.random() >= self.ignore_meta_prob

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        keep = self._fixed[i] if self._fixed is not None else self._keep_meta()
        return self.encoded[i].example(keep)


def collate(pad_id: int) -> Callable[[list[dict[str, list[int]]]], dict[str, Any]]:
    """Right-pads a batch (training), masking padding in attention and labels."""
    import torch

    def _collate(rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return _collate
