"""Incremental detokenization and stop strings: text fragments that concatenate to the final text."""

from __future__ import annotations

from collections.abc import Sequence

# How many prompt tokens to decode in front of the first completion token, so that tokenizers
# which drop a leading space when decoding from the start of a sequence keep it here.
_CONTEXT_TOKENS = 4


class Decoder:
    """Decodes ids with the fast tokenizer's Rust backend: special tokens skipped, spaces never
    'cleaned up' (that would make fragments disagree with the whole text)."""

    __slots__ = ("backend",)

    def __init__(self, tokenizer) -> None:
        self.backend = tokenizer.backend_tokenizer  # transformers' fast tokenizers all have one

    def __call__(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)


def make_decoder(tokenizer) -> Decoder:
    return Decoder(tokenizer)


class IncrementalDetokenizer:
    """Turns token ids, one at a time, into text fragments that concatenate to the completion text.

    `tokenizers.decoders.DecodeStream` does the work (it holds a partial UTF-8 character back until
    it is complete, and keeps the leading space a prompt context gives); measured against the
    hand-written offsets version it replaced: same fragments on SmolLM2 and Gemma text, 4-7x
    faster. `flush()` adds what it still holds at the end (an incomplete character: U+FFFD), as a
    whole-sequence decode would.
    """

    __slots__ = ("_stream", "_decode", "_held", "_context")

    def __init__(self, decode: Decoder, prompt_ids: Sequence[int]) -> None:
        from tokenizers.decoders import DecodeStream

        self._decode = decode
        self._context = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._stream = DecodeStream(ids=self._context, skip_special_tokens=True)
        self._held: list[int] = []  # ids given since the last fragment

    def add(self, token_id: int) -> str:
        """The new text that `token_id` completes ("" while a character is still incomplete)."""
        self._held.append(token_id)
        fragment = self._stream.step(self._decode.backend, token_id)
        if fragment is None:
            return ""
        self._context = (self._context + self._held)[-_CONTEXT_TOKENS:]
        self._held = []
        return fragment

    def flush(self) -> str:
        """Whatever text is still held back (an incomplete character becomes U+FFFD)."""
        if not self._held:
            return ""
        held, self._held = self._held, []
        return self._decode(self._context + held)[len(self._decode(self._context)) :]


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
        hit: int | None = None
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
