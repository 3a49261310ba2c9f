"""Generation parameters: one validated model, node defaults merged with request overrides.

Top level: both sides use it: the entry validates a request's parameters once, the node samples with them."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, model_validator

from graph.errors import InvalidRequest
from graph.field_errors import describe, field_errors
from graph.response_format import ResponseFormat
from graph.tools import ToolCalling

MAX_STOP_STRINGS = 8
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries


def _whole_number(value: Any) -> Any:
    """JSON Schema counts 8.0 as an integer; strict pydantic would not. Booleans and strings stay
    refused (strict mode), a float with a fraction stays a float (and is refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _token_keys(value: Any) -> Any:
    """logit_bias as JSON has it: token ids as digit strings ("50256") become integers."""
    if isinstance(value, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() and len(k) <= 9 else k: v for k, v in value.items()}
    return value


# An integer field: strict (no "8", no true), but 8.0 is 8, as JSON Schema says.
Int = Annotated[int, BeforeValidator(_whole_number)]
MAX_NEW_TOKENS = 4096  # the most any node may allow (a node's own limit: max_new_tokens_limit)


class GenerationParams(BaseModel):
    """Decoding controls. Each field says its neutral value; bounds are enforced at the edge."""

    # strict: a number is a number (no "8", no true for 1), a flag is a flag.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    max_new_tokens: Int = Field(default=32, ge=1, le=MAX_NEW_TOKENS, description="Tokens to generate at most.")
    temperature: float = Field(
        default=1.0, ge=0.0, le=5.0, description="Softmax temperature when sampling; 1.0 = no change."
    )
    top_k: Int = Field(default=0, ge=0, le=1000, description="Keep the k most likely tokens; 0 = off.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass to keep; 1.0 = off.")
    repetition_penalty: float = Field(
        default=1.0, gt=0.0, le=10.0, description="Penalty on tokens already present; 1.0 = off."
    )
    min_p: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Drop tokens below min_p times the best token's probability when sampling; 0.0 = off.",
    )
    frequency_penalty: float = Field(
        default=0.0,
        ge=-2.0,
        le=2.0,
        description="Subtracted from a token's logit once per time it is in the completion; 0.0 = off.",
    )
    presence_penalty: float = Field(
        default=0.0,
        ge=-2.0,
        le=2.0,
        description="Subtracted from a token's logit when it is in the completion at all; 0.0 = off.",
    )
    logit_bias: Annotated[
        dict[Annotated[int, Field(ge=0)], Annotated[float, Field(ge=-100.0, le=100.0)]],
        BeforeValidator(_token_keys),
    ] = Field(
        default_factory=dict,
        max_length=MAX_LOGIT_BIAS,
        description="Token id -> added to its logit (-100 bans it, 100 all but forces it); {} = off.",
        json_schema_extra={"propertyNames": {"pattern": "^[0-9]{1,9}$"}},
    )
    do_sample: bool = Field(default=False, description="Sample (true) or take the most likely token (false).")
    num_return_sequences: Int = Field(
        default=1, ge=1, le=8, description="Completions per prompt; more than 1 needs do_sample."
    )
    # Bounds next to int, inside the Optional: elsewhere pydantic writes them as "ge"/"le" in the schema.
    seed: Annotated[int, Field(ge=0, le=2**32 - 1), BeforeValidator(_whole_number)] | None = Field(
        default=None, description="Seed for sampling; same seed, same text."
    )
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=MAX_STOP_STRINGS,
        description="Generation ends when the completion contains one of these strings.",
    )
    max_time_ms: Annotated[int, Field(ge=1, le=600000), BeforeValidator(_whole_number)] | None = Field(
        default=None, description="Wall-clock budget; ends with finish_reason 'time'."
    )
    logprobs: bool = Field(default=False, description="Return the log-probability of each generated token.")
    top_logprobs: Int = Field(
        default=0, ge=0, le=20, description="Alternatives per token with their log-probabilities."
    )
    response_format: ResponseFormat | None = Field(
        default=None,
        description="Structured output (OpenAI's shape): json_object, or json_schema with a schema; None = text.",
        examples=[{"type": "json_object"}],
    )
    tools: ToolCalling | None = Field(
        default=None,
        description="Tool calling (graph/tools.py): tools, choice, parallel calls; each call is held to its schema.",
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> GenerationParams:
        if self.do_sample and self.temperature == 0.0:
            raise ValueError("temperature: 0 with do_sample=true is undefined; set do_sample=false for greedy")
        if self.num_return_sequences > 1 and not self.do_sample:
            raise ValueError(
                "num_return_sequences: greedy decoding gives the same text each time; "
                "set do_sample=true or num_return_sequences=1"
            )
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs=true")
        if self.tools is not None and self.response_format is not None and self.response_format.constrained():
            raise ValueError("response_format: not with tools here (the tool calls' grammar holds the answer)")
        return self

    def grammar(self) -> str | None:
        """The llguidance grammar the sampler holds this request's tokens to (None: free text)."""
        if self.tools is not None:
            return self.tools.grammar()
        return self.response_format.grammar() if self.response_format is not None else None

    def transformers_kwargs(self) -> dict[str, Any]:
        """These params as `model.generate` kwargs (transformers' names), for the plain-transformers
        baseline of the benchmarks. The engine does not use this: it decodes with
        graph/engine/sampling.py, which reads GenerationParams directly."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "num_return_sequences": self.num_return_sequences,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k or None, top_p=self.top_p)
        if self.stop:
            kwargs["stop_strings"] = list(self.stop)
        if self.max_time_ms is not None:
            kwargs["max_time"] = self.max_time_ms / 1000.0
        if self.logprobs:
            kwargs.update(output_scores=True, return_dict_in_generate=True)
        return kwargs


def _optional_fields() -> dict[str, Any]:
    """GenerationParams' fields, each optional (default None) with the same bounds and description."""
    fields: dict[str, Any] = {}
    for name, info in GenerationParams.model_fields.items():
        optional = copy.copy(info)
        optional.default, optional.default_factory = None, None
        fields[name] = (Union[info.annotation, None], optional)  # noqa: UP007  a runtime typing object: `|` is not defined for every form
    return fields


# Same fields and bounds as GenerationParams, every one optional: what a request may override (the
# API schema shows the bounds). Cross-field rules are checked once, on the merged GenerationParams.
if TYPE_CHECKING:  # type checkers cannot follow create_model; the fields are GenerationParams'
    GenerationOverrides = GenerationParams
else:
    GenerationOverrides = create_model(
        "GenerationOverrides",
        __config__=ConfigDict(frozen=True, extra="forbid", strict=True),
        __doc__="Per-request overrides of a node's generation defaults; omitted fields keep the default.",
        **_optional_fields(),
    )


def merge_params(
    defaults: GenerationParams,
    overrides: BaseModel | None,
    *,
    max_new_tokens_limit: int,
    field_prefix: str = "params",
) -> GenerationParams:
    """Node defaults + request overrides -> validated params, or InvalidRequest naming the field."""
    data = defaults.model_dump()
    if overrides is not None:
        data.update(overrides.model_dump(exclude_none=True))
    try:
        params = GenerationParams.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc.errors(), prefix=field_prefix)
        raise InvalidRequest(describe(errors), field=errors[0][0]) from None
    if params.max_new_tokens > max_new_tokens_limit:
        raise InvalidRequest(
            f"{field_prefix}.max_new_tokens: {params.max_new_tokens} is above this node's "
            f"limit of {max_new_tokens_limit}",
            field=f"{field_prefix}.max_new_tokens",
        )
    return params
