"""An agent framework, unmodified, against a real `bentoml serve` of configs/tiny.yaml: the OpenAI
Agents SDK runs a tool-using agent to completion on a node and on a named graph (through chat
completions). The first turn must call the tool (tool_choice required); the SDK then resets the
choice to auto, and the random model answers in text, which ends the run."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import pytest
import yaml

from tests.server import ROOT, Server

agents = pytest.importorskip("agents")


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    """configs/tiny.yaml with room for an agent's prompt (the tools' instructions, the call, its result)."""
    config = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    for node in config["generators"].values():
        node["max_prompt_tokens"] = 900
    path = tmp_path_factory.mktemp("agents") / "tiny_agents.yaml"
    path.write_text(yaml.safe_dump(config))
    with Server(config=path, name="agents") as srv:
        yield srv


@pytest.mark.parametrize("model", ["tiny_a", "graph:best"])
def test_an_agent_calls_its_tool_and_finishes(server: Server, model: str) -> None:
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
    from agents.items import ToolCallItem, ToolCallOutputItem
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # no traces sent anywhere
    seen: list[tuple[str, bool]] = []

    @function_tool
    def get_weather(city: Literal["Paris", "Oslo"], celsius: bool) -> str:
        """The weather in a city (closed choices: a random model's free string would run to max_tokens)."""
        seen.append((city, celsius))
        return json.dumps({"city": city, "temp": 21 if celsius else 70})

    client = AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    agent = Agent(
        name="weather",
        instructions="Answer with the weather.",
        model=OpenAIChatCompletionsModel(model=model, openai_client=client),
        model_settings=ModelSettings(
            tool_choice="required", max_tokens=100, temperature=1.0, parallel_tool_calls=False
        ),
        tools=[get_weather],
    )
    result = asyncio.run(Runner.run(agent, "Weather in Paris?", max_turns=4))
    calls = [i for i in result.new_items if isinstance(i, ToolCallItem)]
    outputs = [i for i in result.new_items if isinstance(i, ToolCallOutputItem)]
    assert len(calls) >= 1 and len(outputs) == len(calls) == len(seen)  # the tool ran with valid arguments
    assert all(city in ("Paris", "Oslo") and isinstance(celsius, bool) for city, celsius in seen)
    assert isinstance(result.final_output, str)  # the run ended with the model's text
