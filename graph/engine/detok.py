"""Incremental detokenization and stop strings: text fragments that concatenate to the final text."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

# How many prompt tokens to decode in front of the first completion token, so that tokenizers
# which drop a leading space when decoding from the start of a sequence keep it here.
_CONTEXT_TOKENS = 4


def make_decoder(tokenizer) -> Callable[[Sequence[int]], str]:
    """A decode function that skips special tokens and never 'cleans up' spaces.

    It uses the Rust tokenizer directly when there is one (no Python wrapper cost per call, and no
    `clean_up_tokenization_spaces`, which would make fragments disagree with the whole text).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "decode"):
        return lambda ids: backend.decode(list(ids), skip_special_tokens=True)
    return lambda ids: tokenizer.decode(
        list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
    )


class IncrementalDetokenizer:
    """Turns token ids, one at a time, into text fragments (the offsets trick of TGI and vLLM).

    A fragment is only released once it no longer ends in U+FFFD (a partial UTF-8 character);
    `flush()` releases what is left at the end. The fragments concatenate to the completion text.
    """

    __slots__ = ("_decode", "_ids", "_prefix_offset", "_read_offset")

    def __init__(self, decode: Callable[[Sequence[int]], str], prompt_ids: Sequence[int]) -> None:
        self._decode = decode
        self._ids: list[int] = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def add(self, token_id: int) -> str:
        """The new text that `token_id` completes ("" while a character is still incomplete)."""
        self._ids.append(token_id)
        return self._release(final=False)

    def flush(self) -> str:
        """Whatever text is still held back (an incomplete character becomes U+FFFD)."""
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        ids = self._ids
        if self._read_offset >= len(ids):
            return ""
        prefix = self._decode(ids[self._prefix_offset : self._read_offset])
        full = self._decode(ids[self._prefix_offset :])
        if len(full) <= len(prefix) and not final:
            return ""
        if full.endswith("\ufffd") and not final:
            return ""
        # The completion text is, by definition, the concatenation of these deltas.
        delta = full[len(prefix) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(ids)
        # Keep the window small: only the ids from the prefix offset on are needed.
        if self._prefix_offset > 32:
            del ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
        return delta


class StopMatcher:
    """Finds stop strings in the growing completion text and says how much text is safe to send.

    Text that could be the start of a stop string is held back until the next characters decide.
    """

    __slots__ = ("_stops", "_longest", "text", "_sent", "_searched")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._longest = max((len(s) for s in self._stops), default=0)
        self.text = ""
        self._sent = 0
        self._searched = 0

    def add(self, fragment: str) -> tuple[str, bool]:
        """Append a fragment; returns (text safe to send now, whether a stop string was found).

        On a stop, the text is truncated right before the earliest stop string and everything up to
        there is returned.
        """
        if not fragment:
            return "", False
        self.text += fragment
        if not self._stops:
            out = self.text[self._sent :]
            self._sent = len(self.text)
            return out, False
        start = max(0, self._searched - self._longest + 1)
        hit: Optional[int] = None
        for s in self._stops:
            i = self.text.find(s, start)
            if i != -1 and (hit is None or i < hit):
                hit = i
        self._searched = len(self.text)
        if hit is not None:
            self.text = self.text[:hit]
            out = self.text[self._sent :] if hit > self._sent else ""
            self._sent = len(self.text)
            return out, True
        safe = len(self.text) - self._held_back()
        out = self.text[self._sent : safe] if safe > self._sent else ""
        self._sent = max(self._sent, safe)
        return out, False

    def rest(self) -> str:
        """The held-back text, sent when the sequence ends for another reason."""
        out = self.text[self._sent :]
        self._sent = len(self.text)
        return out

    def _held_back(self) -> int:
        text = self.text
        for k in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self._stops):
                return k
        return 0
