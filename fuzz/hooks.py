"""Schemathesis hooks for fuzz/run.sh (loaded through SCHEMATHESIS_HOOKS).

The generation routes accept max_tokens up to 131072 and, without one, generate up to the
coordinator's default limit (4096, coordinator/src/jobs/jobs.ts); the fuzz machine's CPUs really
generate them with the default model, for tens of seconds. Such a request is slow, not a finding,
and the fuzzer tests the API, not the engine's speed: a body whose token limits are integers above
TOKEN_CAP gets TOKEN_CAP, and one with neither limit gets max_tokens = TOKEN_CAP. Values of the
wrong type or out of range below are left for the coordinator to refuse.
"""

from __future__ import annotations

from typing import Any

import schemathesis

TOKEN_CAP = 8
GENERATION_PATHS = {"/v1/chat/completions", "/v1/completions"}
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    operation = getattr(context, "operation", None)
    if operation is None or operation.path not in GENERATION_PATHS or not isinstance(body, dict):
        return body
    for field in TOKEN_FIELDS:
        if _is_int(body.get(field)) and body[field] > TOKEN_CAP:
            body[field] = TOKEN_CAP
    if all(body.get(field) is None for field in TOKEN_FIELDS):
        body["max_tokens"] = TOKEN_CAP
    return body
