"""The one error this package raises: what the coordinator answered, OpenAI-shaped.

The coordinator's error catalog (protocol/src/errors.ts) gives every error a stable code, an
HTTP status and a body ``{"error": {"message", "type", "code", "param"}}``; SharedLLMError
carries those fields as they came.
"""

from __future__ import annotations

from typing import Any

import httpx


class SharedLLMError(Exception):
    """An error answer from a SharedLLM coordinator, or a coordinator that could not be reached.

    ``status`` is the HTTP status (None when no answer came); ``code`` the catalog's stable code
    (``invalid_api_key``, ``insufficient_credits``, ``not_found``...); ``type`` the OpenAI error
    type (``authentication_error``...); ``message`` what to do about it.
    """

    def __init__(self, message: str, *, status: int | None, code: str, type: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.type = type
        self.param = param

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no answer"
        return f"{self.code} ({where}): {self.message}"

    def __repr__(self) -> str:
        return f"SharedLLMError(status={self.status!r}, code={self.code!r}, type={self.type!r}, message={self.message!r})"

    @classmethod
    def from_response(cls, res: httpx.Response) -> SharedLLMError:
        """The error an answer stands for; a body outside the catalog's shape keeps its status and text."""
        try:
            body: Any = res.json()
        except ValueError:
            body = None
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("code"), str):
            param = err.get("param")
            return cls(
                err["message"],
                status=res.status_code,
                code=err["code"],
                type=str(err.get("type") or "unknown"),
                param=param if isinstance(param, str) else None,
            )
        text = res.text[:500] or res.reason_phrase
        return cls(
            f"{res.request.method} {res.request.url.path} answered {res.status_code} without an OpenAI-shaped error: {text}",
            status=res.status_code,
            code="unexpected_response",
            type="server_error",
        )
