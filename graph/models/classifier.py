"""Text classifiers with one interface: a fine-tuned sequence classifier or zero-shot embedding similarity."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from graph.errors import ConfigError
from graph.results import Classification, Embedding

log = logging.getLogger(__name__)
HEAD_PREFIXES = ("classifier.", "score.", "pre_classifier.", "classification_head.")


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _results(probs: Any, labels: list[str], score_label: str) -> list[Classification]:
    index = labels.index(score_label)
    out = []
    for row in probs.tolist():
        best = max(range(len(labels)), key=row.__getitem__)
        out.append(
            Classification(
                label=labels[best],
                score=min(max(row[index], 0.0), 1.0),
                labels={name: float(p) for name, p in zip(labels, row)},
            )
        )
    return out


def _pooled(hidden: Any, mask: Any) -> Any:
    """Mean of the unmasked token states, L2-normalised (sentence-transformers' MiniLM pooling)."""
    import torch

    mask = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=-1)


def _embeddings(encode: Any, tokenizer: Any, texts: list[str], max_batch_size: int, max_length: int) -> list[Embedding]:
    """`texts` embedded in batches of `max_batch_size`: `encode(enc)` gives the last hidden states."""
    import torch

    out: list[Embedding] = []
    with torch.inference_mode():
        for chunk in _chunks(texts, max_batch_size):
            enc = tokenizer(
                chunk, padding=True, padding_side="right", truncation=True, max_length=max_length, return_tensors="pt"
            )
            vectors = _pooled(encode(enc).float(), enc["attention_mask"])
            counts = enc["attention_mask"].sum(1).tolist()
            out += [Embedding(vector=v, tokens=int(n)) for v, n in zip(vectors.tolist(), counts)]
    return out


def _check_score_label(score_label: str, labels: list[str], source: str) -> None:
    if score_label not in labels:
        raise ConfigError(
            f"classifier.score_label: {score_label!r} is not a label of {source}; its labels are {labels}",
            field="classifier.score_label",
        )


class SequenceClassifier:
    """A fine-tuned AutoModelForSequenceClassification; labels come from config.id2label."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        score_label: str,
        max_batch_size: int = 64,
        max_length: int = 256,
        source: str = "model",
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        id2label = model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]
        _check_score_label(score_label, self.labels, source)
        self.score_label = score_label
        self.max_batch_size = max_batch_size
        self.max_length = min(max_length, _max_positions(model, tokenizer))

    @classmethod
    def from_pretrained(
        cls, source: str, *, score_label: str, max_batch_size: int = 64, max_length: int = 256, **hf_kwargs: Any
    ) -> SequenceClassifier:
        """Load a checkpoint; warn loudly if its classification head had to be initialised at random."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, **hf_kwargs)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=torch.float32, output_loading_info=True, **hf_kwargs
        )
        warn_if_untrained_head(info, source)
        return cls(
            model,
            tokenizer,
            score_label=score_label,
            max_batch_size=max_batch_size,
            max_length=max_length,
            source=source,
        )

    def classify(self, texts: list[str]) -> list[Classification]:
        import torch

        results: list[Classification] = []
        with torch.inference_mode():
            for chunk in _chunks(texts, self.max_batch_size):
                enc = self.tokenizer(
                    chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                )
                probs = torch.softmax(self.model(**enc).logits.float(), dim=-1)
                results += _results(probs, self.labels, self.score_label)
        return results

    def embeddings(self, texts: list[str]) -> list[Embedding]:
        """Sentence embeddings: the encoder's last hidden states, mean-pooled (the head is not used)."""

        def encode(enc: Any) -> Any:
            return self.model(**enc, output_hidden_states=True).hidden_states[-1]

        return _embeddings(encode, self.tokenizer, texts, self.max_batch_size, self.max_length)


def warn_if_untrained_head(loading_info: dict[str, Any], source: str) -> bool:
    """Log a WARNING when the classification head was missing from the checkpoint; True if so."""
    missing = [k for k in loading_info.get("missing_keys", ()) if k.startswith(HEAD_PREFIXES)]
    if missing:
        log.warning(
            "classifier %s has no trained classification head (newly initialised: %s): its scores "
            "are random and meaningless. Use a fine-tuned checkpoint (e.g. "
            "distilbert/distilbert-base-uncased-finetuned-sst-2-english) or mode: zero_shot.",
            source,
            ", ".join(sorted(missing)),
        )
    return bool(missing)


class ZeroShotEmbeddingClassifier:
    """Embed texts (mean pooling, L2-normalised) and softmax their cosine to label descriptions / T."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        labels: dict[str, str],
        score_label: str,
        temperature: float = 0.05,
        max_batch_size: int = 64,
        max_length: int = 256,
    ) -> None:
        import torch

        if len(labels) < 2:
            raise ConfigError("classifier.labels: zero_shot needs at least two labels", field="classifier.labels")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = list(labels)
        _check_score_label(score_label, self.labels, "classifier.labels")
        self.score_label = score_label
        self.temperature = temperature
        self.max_batch_size = max_batch_size
        self.max_length = min(max_length, _max_positions(model, tokenizer))
        self.label_embeddings: torch.Tensor = self.embed(list(labels.values()))

    def embed(self, texts: list[str]):
        """L2-normalised mean-pooled embeddings, shape (len(texts), hidden)."""
        import torch

        parts = []
        with torch.inference_mode():
            for chunk in _chunks(texts, self.max_batch_size):
                enc = self.tokenizer(  # right padding: absolute positions do not move with the batch
                    chunk,
                    padding=True,
                    padding_side="right",
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                parts.append(_pooled(self.model(**enc).last_hidden_state.float(), enc["attention_mask"]))
        return torch.cat(parts) if parts else torch.empty(0, self.model.config.hidden_size)

    def embeddings(self, texts: list[str]) -> list[Embedding]:
        """Sentence embeddings with their token counts (the same vectors `classify` compares)."""
        encode = lambda enc: self.model(**enc).last_hidden_state  # noqa: E731
        return _embeddings(encode, self.tokenizer, texts, self.max_batch_size, self.max_length)

    def classify(self, texts: list[str]) -> list[Classification]:
        import torch

        if not texts:
            return []
        with torch.inference_mode():
            sims = self.embed(texts) @ self.label_embeddings.T
            probs = torch.softmax(sims / self.temperature, dim=-1)
        return _results(probs, self.labels, self.score_label)


def _max_positions(model: Any, tokenizer: Any) -> int:
    """The smallest real length limit of model and tokenizer (tokenizers may say 1e30 for none)."""
    found = (getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None))
    return min((int(x) for x in found if isinstance(x, int) and 0 < x < 10**9), default=10**6)
