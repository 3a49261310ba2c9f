"""A ChatPrompt through the engine (the OpenAI face's chats): fitted once by the node, like chat sessions."""

from __future__ import annotations

import asyncio

from graph.chat_format import PLAIN_STOP, ChatMessage, ChatPrompt, render
from graph.params import GenerationParams

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MESSAGES = [
    ChatMessage(role="system", content="Be terse."),
    ChatMessage(role="user", content="The cat"),
    ChatMessage(role="assistant", content="sat."),
    ChatMessage(role="user", content="Then?"),
]


def make(tiny_dir, *, template: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from graph.engine import GenerationEngine

    tok = AutoTokenizer.from_pretrained(tiny_dir / "causal_lm")
    if template:
        tok.chat_template = TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "causal_lm")
    return GenerationEngine(model, tok, name="t", max_batch_size=4, chat_template=template), tok


def test_template_node_formats_a_chat_once(tiny_dir) -> None:
    engine, tok = make(tiny_dir, template=True)
    ids, params, _ = engine._fit(ChatPrompt(messages=MESSAGES), GenerationParams())
    assert ids == render(tok, MESSAGES, template=True) and params == GenerationParams()
    assert tok.decode(ids).count("<|user|>") == 2  # not wrapped a second time
    # /generate's text on a template node is still one user message through the template
    one = engine._fit(ChatPrompt(messages=[ChatMessage(role="user", content="The cat")]), GenerationParams())[0]
    assert engine._encode("The cat") == one


def test_plain_node_gets_the_transcript_and_its_stop(tiny_dir) -> None:
    engine, tok = make(tiny_dir, template=False)
    ids, params, _ = engine._fit(ChatPrompt(messages=MESSAGES), GenerationParams(stop=["END"]))
    assert ids == render(tok, MESSAGES, template=False)
    assert params.stop == ["END", PLAIN_STOP]
    assert engine._fit("The cat", GenerationParams()) == ("The cat", GenerationParams(), None)  # text untouched


def test_chat_prompt_generates_like_its_fitted_ids(tiny_dir) -> None:
    engine, _ = make(tiny_dir, template=False)
    engine.start()
    try:
        params = GenerationParams(max_new_tokens=6)
        ids, fitted, kept = engine._fit(ChatPrompt(messages=MESSAGES), params)

        async def both():
            return await asyncio.gather(
                engine.generate(ChatPrompt(messages=MESSAGES), params), engine.generate(ids, fitted)
            )

        (chat,), (raw,) = asyncio.run(both())
        assert chat.text == raw.text and chat.prompt_tokens == raw.prompt_tokens == len(ids)
        assert chat.prompt_messages == kept == len(MESSAGES) and raw.prompt_messages is None
    finally:
        engine.close()
