from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("text", "max_length")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    text: str
    max_length: int
    def __init__(self, text: _Optional[str] = ..., max_length: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class GenerateStreamedRequest(_message.Message):
    __slots__ = ("text", "max_length", "intermediate_result_interval_ms")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    INTERMEDIATE_RESULT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    text: str
    max_length: int
    intermediate_result_interval_ms: int
    def __init__(self, text: _Optional[str] = ..., max_length: _Optional[int] = ..., intermediate_result_interval_ms: _Optional[int] = ...) -> None: ...

class GenerateStreamedResponse(_message.Message):
    __slots__ = ("text_fragment",)
    TEXT_FRAGMENT_FIELD_NUMBER: _ClassVar[int]
    text_fragment: str
    def __init__(self, text_fragment: _Optional[str] = ...) -> None: ...
