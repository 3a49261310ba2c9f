"""Baseline for `make bench`: the default models served the seed tutorial's way, one request at a time.

Same shape as the tutorial (shared/seeds/001): one `@bentoml.service` per generator running a
`transformers.pipeline("text-generation")` per request, a classifier that scores completions one
call per text, and an entry service that gathers the generators with `asyncio.gather` + `.to_async`
and then scores one by one. BentoML defaults are kept (threads=1, 60 s traffic timeout -> 504).
Two deliberate differences so both servers do the same work: `max_new_tokens` and greedy decoding
really reach the generators (the tutorial's kwargs were silently dropped), and the models are the
project's default ones (float32 copies in the BentoML model store, MiniLM zero-shot classifier).

    bentoml serve bench.baseline_service:BaselineGraph --port 3000
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import bentoml
from pydantic import BaseModel, Field

with bentoml.importing():
    import transformers

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class BaselineItem(BaseModel):
    """One scored completion of the baseline graph."""

    model: str = Field(description="Generator service name.")
    generated: str = Field(description="Prompt + completion, as the tutorial returns it.")
    score: float = Field(ge=0.0, le=1.0, description="Classifier probability of the score label.")
    completion_tokens: int = Field(description="Tokens the generator produced.")


class Completion(BaseModel):
    """What a generator service returns to the entry service."""

    generated: str
    completion_tokens: int


def store_path(tag: str) -> str:
    """Folder of a converted model in the BentoML model store (`make prepare` puts it there)."""
    return bentoml.models.get(tag).path


class PipelineGenerator:
    """A text-generation pipeline called once per request, as in the tutorial; TAG set per subclass."""

    TAG = ""

    def __init__(self) -> None:
        self.pipe = transformers.pipeline("text-generation", model=store_path(self.TAG))

    @bentoml.api
    def generate(self, sentence: str, max_new_tokens: int = 16) -> Completion:
        # return_tensors gives the ids, so completion_tokens is exact; the text is decoded from them.
        ids: list[int] = self.pipe(sentence, max_new_tokens=max_new_tokens, do_sample=False, return_tensors=True)[0][
            "generated_token_ids"
        ]
        prompt_len = self.pipe.preprocess(sentence)["input_ids"].shape[-1]  # the pipeline's own encoding
        completion = self.pipe.tokenizer.decode(ids[prompt_len:], skip_special_tokens=True)
        return Completion(generated=sentence + completion, completion_tokens=len(ids) - prompt_len)


@bentoml.service()
class SmolLM2(PipelineGenerator):
    TAG = "smollm2-135m-instruct"


@bentoml.service()
class Gemma3(PipelineGenerator):
    TAG = "gemma-3-270m"


@bentoml.service()
class MiniLMClassifier:
    """The project's zero-shot classifier with configs/default.yaml's labels, one text per call."""

    def __init__(self) -> None:
        from graph.config import load_config
        from graph.models.classifier import ZeroShotEmbeddingClassifier
        from graph.models.embedded import folder_path

        node = load_config(DEFAULT_CONFIG).classifier
        path = folder_path(node.model.embedded)
        self.classifier = ZeroShotEmbeddingClassifier(
            transformers.AutoModel.from_pretrained(path),
            transformers.AutoTokenizer.from_pretrained(path),
            labels=node.labels,
            score_label=node.score_label,
            temperature=node.temperature,
            max_length=node.max_length,
        )

    @bentoml.api
    def classify_generated_text(self, sentence: str) -> float:
        return self.classifier.classify([sentence])[0].score


@bentoml.service()
class BaselineGraph:
    smollm2 = bentoml.depends(SmolLM2)
    gemma3 = bentoml.depends(Gemma3)
    classifier = bentoml.depends(MiniLMClassifier)

    @bentoml.api
    async def generate_score(
        self, original_sentence: str = "I have an idea!", max_new_tokens: int = 16
    ) -> list[BaselineItem]:
        """Both generators at once, then one classifier call per completion."""
        names = ["smollm2", "gemma3"]
        outs: list[Any] = await asyncio.gather(
            self.smollm2.to_async.generate(sentence=original_sentence, max_new_tokens=max_new_tokens),
            self.gemma3.to_async.generate(sentence=original_sentence, max_new_tokens=max_new_tokens),
        )
        items = []
        for name, out in zip(names, outs):
            out = Completion.model_validate(out)
            score = await self.classifier.to_async.classify_generated_text(sentence=out.generated)
            items.append(
                BaselineItem(model=name, generated=out.generated, score=score, completion_tokens=out.completion_tokens)
            )
        return items
