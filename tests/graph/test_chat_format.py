"""Chat messages are formatted exactly once, by the node: its chat template, or the transcript format."""

from __future__ import annotations

import asyncio

import pytest

from graph.chat_format import ChatMessage, ChatPrompt, render_chat, transcript
from graph.params import GenerationParams

# A small template in the shape of SmolLM2's (ChatML): each turn wrapped in markers, then the reply's opener.
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MESSAGES = [ChatMessage(role="developer", content="Be terse."), ChatMessage(role="user", content="The cat"),
            ChatMessage(role="assistant", content="sat."), ChatMessage(role="user", content="Then?")]


def make(tiny_dir, *, template: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from graph.engine import GenerationEngine

    tok = AutoTokenizer.from_pretrained(tiny_dir / "causal_lm")
    if template:
        tok.chat_template = TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "causal_lm")
    return GenerationEngine(model, tok, name="t", max_batch_size=4, chat_template=template), tok


def test_template_node_formats_messages_once(tiny_dir) -> None:
    engine, tok = make(tiny_dir, template=True)
    text = render_chat(MESSAGES, tok, use_template=True)
    assert text == "<|system|>Be terse.</s><|user|>The cat</s><|assistant|>sat.</s><|user|>Then?</s><|assistant|>"
    expected = tok(text, add_special_tokens=False)["input_ids"]
    assert engine._encode(ChatPrompt(messages=MESSAGES)) == expected  # not wrapped a second time
    # /generate's plain string on a template node: one user message through the template, as before
    one = tok("<|user|>The cat</s><|assistant|>", add_special_tokens=False)["input_ids"]
    assert engine._encode("The cat") == one == engine._encode(ChatPrompt(messages=[ChatMessage(role="user", content="The cat")]))


def test_node_without_template_uses_the_transcript(tiny_dir) -> None:
    engine, tok = make(tiny_dir, template=False)
    assert render_chat(MESSAGES, tok, use_template=False) == transcript(MESSAGES)
    ids = engine._encode(ChatPrompt(messages=MESSAGES))
    assert ids == tok(transcript(MESSAGES), add_special_tokens=True)["input_ids"]  # with BOS where the tokenizer adds one
    assert engine._encode("The cat") == tok("The cat", add_special_tokens=True)["input_ids"]  # plain text unchanged


def test_chat_prompt_generates_like_its_text(tiny_dir) -> None:
    """The engine runs a ChatPrompt exactly as the same text sent raw (greedy, same tokens)."""
    engine, _ = make(tiny_dir, template=False)
    engine.start()
    try:
        params = GenerationParams(max_new_tokens=6)

        async def both():
            return await asyncio.gather(engine.generate(ChatPrompt(messages=MESSAGES), params),
                                        engine.generate(transcript(MESSAGES), params))

        (chat,), (raw,) = asyncio.run(both())
        assert chat.text == raw.text and chat.prompt_tokens == raw.prompt_tokens
    finally:
        engine.close()


def test_empty_conversation_is_refused() -> None:
    with pytest.raises(ValueError):
        ChatPrompt(messages=[])
