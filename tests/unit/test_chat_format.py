"""Chat formatting and cutting (graph/chat_format.py) on a real tokenizer, and the bot's message splitting."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from clients.telegram_bot import TELEGRAM_LIMIT, split_message
from graph.chat_format import PLAIN_STOP, ChatMessage, chat_params, clean_reply, fit_chat, render
from graph.errors import InvalidRequest
from graph.params import GenerationParams

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tok(tiny_dir):
    t = AutoTokenizer.from_pretrained(tiny_dir / "causal_lm")
    t.chat_template = TEMPLATE
    return t


def conversation(turns: int) -> list[ChatMessage]:
    out = [ChatMessage(role="system", content="be brief")]
    for i in range(turns):
        out += [ChatMessage(role="user", content=f"question {i}"), ChatMessage(role="assistant", content=f"answer {i}")]
    return [*out, ChatMessage(role="user", content="last question")]


def test_plain_transcript_format(tok) -> None:
    ids = render(tok, conversation(1), template=False)
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == (
        "System:bebrief\nUser:question0\nAssistant:answer0\nUser:lastquestion\nAssistant:"
    ).replace(" ", "")


def test_template_is_applied_once(tok) -> None:
    ids = render(tok, conversation(0), template=True)
    text = tok.decode(ids)
    assert text.count("<|user|>") == 1 and text.endswith("<|assistant|>")


@pytest.mark.parametrize("template", [False, True])
def test_cut_oldest_turns_first_to_the_budget(tok, template: bool) -> None:
    msgs = conversation(6)
    whole = fit_chat(tok, msgs, GenerationParams(), template=template, max_tokens=10_000)
    assert whole.kept == len(msgs)
    budget = len(whole.ids) - 1
    cut = fit_chat(tok, msgs, GenerationParams(), template=template, max_tokens=budget)
    assert len(cut.ids) <= budget and cut.kept < len(msgs)
    assert (cut.kept - 1) % 2 == 1  # system + whole turns + the last message: starts at a user message
    assert cut.ids == render(tok, [msgs[0], *msgs[len(msgs) - cut.kept + 1 :]], template=template)


def test_a_message_too_long_alone_is_a_400(tok) -> None:
    with pytest.raises(InvalidRequest) as err:
        fit_chat(
            tok, [ChatMessage(role="user", content="word " * 500)], GenerationParams(), template=False, max_tokens=50
        )
    assert err.value.field == "message" and "send a shorter message" in err.value.message


def test_plain_stop_string_and_cleaning() -> None:
    assert chat_params(GenerationParams(), template=False).stop == [PLAIN_STOP]
    assert chat_params(GenerationParams(), template=True).stop == []
    assert clean_reply(" Fine, thanks." + PLAIN_STOP) == "Fine, thanks."
    assert clean_reply("a\x00b\x00") == "a\ufffdb\ufffd"  # a sampled NUL byte token: PostgreSQL text cannot hold it


def test_split_message_at_telegrams_limit() -> None:
    text = ("word " * 2000).strip()
    parts = split_message(text)
    assert len(parts) == 3 and all(0 < len(p) <= TELEGRAM_LIMIT for p in parts)
    assert " ".join(parts) == text
    assert split_message("x" * 5000) == ["x" * TELEGRAM_LIMIT, "x" * 904]
    assert split_message("short") == ["short"]
