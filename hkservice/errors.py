"""The one error type that crosses layers: it carries a protocol error code and a message."""

from __future__ import annotations


class HkError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
