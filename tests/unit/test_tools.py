"""graph/tools.py: tool definitions, the grammar of each choice, parsing calls back, prompts."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from graph.chat_format import ChatMessage, generic_messages, render
from graph.params import GenerationParams
from graph.tools import CallStream, ToolCall, ToolCalling, parse_calls, template_knows_tools, tool_prompt

ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}
TOOLS = [{"name": "add", "description": "a + b", "parameters": ADD}, {"name": "now"}]
CALL = '<tool_call>\n{"name":"add","arguments":{"a":1,"b":2}}\n</tool_call>'
CALL2 = '<tool_call>\n{"name":"now","arguments":{}}\n</tool_call>'


def calling(**kw) -> ToolCalling:
    return ToolCalling.model_validate({"tools": TOOLS, **kw})


def accepts(grammar: str, text: str) -> bool:
    """Whether llguidance's matcher of `grammar` accepts `text` whole (byte level, no tokenizer)."""
    import llguidance

    tok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokenizer()))  # pyright: ignore[reportArgumentType]
    m = llguidance.LLMatcher(tok, grammar, log_level=0)
    return all(m.consume_token(b) for b in text.encode()) and m.is_accepting()


class _ByteTokenizer:
    """A tokenizer whose tokens are the 256 bytes (and EOS 256), enough to test a grammar."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"</s>"]
    special_token_ids = [256]

    def __call__(self, s: str) -> list[int]:
        return list(s.encode())


@pytest.mark.parametrize(
    "kw, text, ok",
    [
        ({}, "hello", True),
        ({}, CALL, True),
        ({}, CALL + "\n" + CALL2, True),
        ({}, '<tool_call>\n{"name":"add","arguments":{"a":"x","b":2}}\n</tool_call>', False),
        ({}, '<tool_call>\n{"name":"sub","arguments":{}}\n</tool_call>', False),
        ({"parallel": False}, CALL + "\n" + CALL2, False),
        ({"choice": "required"}, "hello", False),
        ({"choice": "required"}, CALL2, True),
        ({"choice": "none"}, "hello", True),
        ({"choice": "none"}, CALL, False),
        ({"function": "add"}, CALL, True),
        ({"function": "add"}, CALL2, False),
    ],
)
def test_the_grammar_of_each_choice(kw, text, ok) -> None:
    assert accepts(calling(**kw).grammar(), text) is ok


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"tools": []}, "at least 1"),
        ({"tools": [{"name": "a b"}]}, "pattern"),
        ({"tools": [{"name": "a"}, {"name": "a"}]}, "given twice"),
        ({"tools": [{"name": "a"}], "function": "b"}, "not one of the tools"),
        ({"tools": [{"name": "a", "parameters": {"type": "string"}}]}, "must describe an object"),
        (
            {"tools": [{"name": "a", "parameters": {"type": "object", "properties": {"x": {"type": "nosuch"}}}}]},
            "cannot compile",
        ),
    ],
)
def test_bad_tools_are_refused_with_the_reason(body, needle) -> None:
    with pytest.raises(ValidationError, match=needle):
        ToolCalling.model_validate(body)


def test_parse_calls_text_and_calls() -> None:
    c = calling()
    assert parse_calls("hi there", c).content == "hi there"
    parsed = parse_calls(CALL + "\n" + CALL2, c)
    assert parsed.content is None
    assert [(x.name, json.loads(x.arguments)) for x in parsed.calls] == [("add", {"a": 1, "b": 2}), ("now", {})]
    assert parsed.calls[0].id.startswith("call_") and parsed.calls[0].id != parsed.calls[1].id
    assert parse_calls(CALL, None).content == CALL  # no tools: text
    assert parse_calls(CALL, calling(choice="none")).content == CALL


def test_a_cut_call_keeps_the_closed_ones_and_a_lone_cut_call_stays_text() -> None:
    c = calling()
    assert [x.name for x in parse_calls(CALL + '\n<tool_call>\n{"na', c).calls] == ["add"]
    cut = parse_calls('<tool_call>\n{"na', c)
    assert cut.calls == [] and cut.content == '<tool_call>\n{"na'


def test_call_stream_emits_text_at_once_and_calls_when_closed() -> None:
    s = CallStream(calling())
    assert s.feed("<to") == []  # could still be a call
    assert s.feed("x") == ["<tox"]  # it is text
    assert s.feed(" more") == [" more"]
    s = CallStream(calling())
    out = []
    text = CALL + "\n" + CALL2
    for i in range(0, len(text), 5):
        out += s.feed(text[i : i + 5])
    out += s.finish()
    assert [x.name for x in out if isinstance(x, ToolCall)] == ["add", "now"]
    assert not [x for x in out if isinstance(x, str)]


def test_call_block_round_trips() -> None:
    call = parse_calls(CALL, calling()).calls[0]
    assert call.block() == CALL


def test_tools_ride_in_generation_params_and_survive_json() -> None:
    p = GenerationParams(tools=calling(choice="required"))
    again = GenerationParams.model_validate_json(p.model_dump_json())
    assert again.tools == p.tools and again.grammar() == p.grammar()
    with pytest.raises(ValidationError, match="response_format: not with tools"):
        GenerationParams.model_validate({"tools": calling(), "response_format": {"type": "json_object"}})


class _Tok:
    """Enough of a tokenizer for render(): characters as ids, a chat template to show."""

    def __init__(self, template: str | None) -> None:
        self.chat_template = template
        self.seen: list = []

    def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=True):
        self.seen.append((messages, tools))
        return "|".join(f"{m['role']}:{m['content']}" for m in messages)

    def __call__(self, text, add_special_tokens=True):
        self.text = text
        return {"input_ids": [ord(ch) for ch in text]}


def _history() -> list[ChatMessage]:
    call = parse_calls(CALL, calling()).calls[0]
    return [
        ChatMessage(role="user", content="1 + 2?"),
        ChatMessage(role="assistant", content="", tool_calls=[call]),
        ChatMessage(role="tool", content="3", tool_call_id=call.id),
    ]


def test_a_template_with_tools_gets_them_in_huggingface_shape() -> None:
    tok = _Tok("{% for t in tools %}{{ t }}{% endfor %}")
    assert template_knows_tools(tok)
    render(tok, _history(), template=True, tools=calling())
    messages, tools = tok.seen[0]
    assert tools[0] == {"type": "function", "function": {"name": "add", "description": "a + b", "parameters": ADD}}
    assert messages[1]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 1, "b": 2}}
    assert messages[2] == {"role": "tool", "content": "3", "tool_call_id": messages[1]["tool_calls"][0]["id"]}


def test_any_other_prompt_gets_the_generic_format() -> None:
    tok = _Tok("{{ messages }}")
    assert not template_knows_tools(tok)
    render(tok, _history(), template=True, tools=calling())
    messages, tools = tok.seen[0]
    assert tools is None
    assert messages[0] == {"role": "system", "content": tool_prompt(calling())}
    assert messages[2] == {"role": "assistant", "content": CALL}
    assert messages[3] == {"role": "user", "content": "<tool_response>\n3\n</tool_response>"}
    plain = _Tok(None)
    render(plain, _history(), template=False, tools=calling())
    assert plain.text.startswith("System: You may call tools.") and "User: <tool_response>\n3" in plain.text
    assert generic_messages([ChatMessage(role="system", content="Be terse.")], calling())[0].content.startswith(
        "Be terse.\n\nYou may call tools."
    )


def test_made_call_and_call_required() -> None:
    from graph.entry.policies.config import Gate
    from graph.tools import call_required, made_call

    assert made_call(CALL, "stop", calling())
    assert not made_call(CALL, "length", calling())  # cut: not a finished answer
    assert not made_call("text", "stop", calling())
    assert not made_call(CALL, "stop", calling(choice="none")) and not made_call(CALL, "stop", None)
    assert call_required(calling(choice="required")) and call_required(calling(function="add"))
    assert not call_required(calling()) and not call_required(None)
    assert Gate(tool_call=True).tool_call
    with pytest.raises(ValidationError, match="tool_call: true"):
        Gate()
