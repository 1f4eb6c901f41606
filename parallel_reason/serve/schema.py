"""Request bodies of the OpenAI-compatible API (pydantic) and the JSON error shape."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: StrictInt = Field(0, ge=-1)  # vLLM extension; -1 or 0 = off
    n: StrictInt = Field(1, ge=1)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: dict | None = None
    stop_token_ids: list[StrictInt] | None = None  # vLLM extension
    return_tokens_as_token_ids: StrictBool = False  # vLLM extension: logprob tokens as "token_id:N"
    return_token_ids: StrictBool = False  # vLLM extension: choice.token_ids, prompt_token_ids


class CompletionRequest(_Request):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    logprobs: StrictInt | None = Field(None, ge=0, le=20)
    echo: StrictBool = False


class _Part(BaseModel):
    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: StrictStr | list[_Part] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)


_TYPE_TAGS = {"str", "int", "bool", "float", "none", "dict", "list", "literal"}


def parse_body(raw: bytes, cls: type[BaseModel]) -> BaseModel:
    """Validate a JSON body; :class:`ApiError` (400) names the offending field."""
    try:
        return cls.model_validate_json(raw)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        if err["type"] in ("json_invalid", "json_type"):
            raise ApiError(400, f"the request body is not valid JSON ({err['msg']})") from None
        # union members show up in the location as type tags ("str", "list[int]"): drop them
        loc = [str(x) for x in err["loc"] if "[" not in str(x) and str(x) not in _TYPE_TAGS]
        param = ".".join(loc) or None
        where = f"{param}: " if param else ""
        raise ApiError(400, f"{where}{err['msg']}", param) from None
