"""Helpers of the inspection API's tests."""

from __future__ import annotations

import httpx

__all__ = ["error_of"]


def error_of(response: httpx.Response) -> tuple[int, str]:
    """``(status, code)`` of an error answer, checked to be ``{"error": {...}}`` with a
    message."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"], body
    return response.status_code, body["error"]["code"]
