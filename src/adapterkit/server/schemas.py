"""The HTTP request and response bodies (pydantic), which FastAPI turns into the OpenAPI schema.

``/v1/classify`` is adapterkit's own; ``/v1/embeddings``, ``/v1/completions`` and ``/v1/models``
follow the OpenAI shapes with ``model`` = the adapter's name. Unknown fields are refused (422
naming them), except the OpenAI fields listed here that clients send by default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, field_validator

_TEXT = {"type": "string"}
_PAIR = {"type": "array", "items": _TEXT, "minItems": 2, "maxItems": 2}


def _text_or_pair(value: Any) -> str | tuple[str, str]:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError("an input is a text or a pair of texts [a, b]")


def _texts(value: Any) -> str | list[str]:
    if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        return value
    raise ValueError("give a text or a non-empty list of texts")


def _setup(value: Any) -> Any:
    if isinstance(value, (str, list, dict)):
        return value
    raise ValueError("give an adapter name, a list of names, or a composition such as {\"parallel\": [...]}")


# Validators of our own keep the error's location on the field itself (``inputs[2]``), not on a
# member of a union; the JSON schema still shows the accepted forms.
Input = Annotated[str | tuple[str, str], PlainValidator(_text_or_pair), WithJsonSchema({"anyOf": [_TEXT, _PAIR]})]
Texts = Annotated[str | list[str], PlainValidator(_texts),
                  WithJsonSchema({"anyOf": [_TEXT, {"type": "array", "items": _TEXT, "minItems": 1}]})]
SetupJSON = Annotated[Any, PlainValidator(_setup), WithJsonSchema(
    {"anyOf": [_TEXT, {"type": "array", "items": _TEXT}, {"type": "object"}]})]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifyBody(Body):
    adapter: SetupJSON = Field(
        description='an adapter name, a list of names (a stack), or a composition in its JSON form, e.g. '
        '{"parallel": ["trec6", "rotten_tomatoes"]}, {"fuse": ["a", "b"], "fusion": "f"}'
    )
    inputs: list[Input] = Field(min_length=1, description="texts, or pairs of texts [[a, b], ...]")
    truncate: bool = Field(False, description="cut inputs longer than the model reads instead of answering 422")


class LabelScores(BaseModel):
    label: str
    scores: dict[str, float] = Field(description="probability of each label, in the head's label order")


class Value(BaseModel):
    value: float = Field(description="a regression head's output")


class Tasks(BaseModel):
    tasks: dict[str, LabelScores | Value] = Field(description="one answer per task of a Parallel composition")


class ClassifyResponse(BaseModel):
    adapter: Any
    results: list[LabelScores | Value | Tasks]


class EmbeddingsBody(Body):
    model: str = Field(description="the adapter whose hidden states are pooled")
    input: Texts = Field(description="a text or a list of texts")
    encoding_format: Literal["float", "base64"] = "float"
    truncate: bool = False
    normalize: bool = Field(True, description="unit-length vectors (as OpenAI's)")
    user: str | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None = None


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class CompletionsBody(Body):
    model: str = Field(description="a causal-LM adapter")
    prompt: Texts
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.0, description="only 0 (greedy decoding) is served")
    n: Literal[1] = 1
    stream: Literal[False] = False
    truncate: bool = Field(False, description="keep a prompt's last tokens when it does not fit, instead of 422")
    user: str | None = None

    @field_validator("temperature")
    @classmethod
    def _greedy(cls, value: float) -> float:
        if value != 0:
            raise ValueError("only greedy decoding (temperature 0) is served")
        return value


class Choice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class CompletionsResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "adapterkit"
    method: str | None
    head: str | None
    labels: list[str]
    resident: bool
    pinned: bool


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    available: list[str] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
