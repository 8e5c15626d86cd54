"""The gateway's one error hierarchy; every error renders as the OpenAI envelope.

    GatewayError           500 internal_error
      InvalidRequest       400 invalid_request_error  malformed JSON, wrong types, bad max_tokens
      AuthenticationFailed 401 authentication_error   missing, unknown or disabled key
      PermissionDenied     403 permission_error       model not allowed for this key
      NotFound             404 not_found_error        unknown model or path
      PayloadTooLarge      413 invalid_request_error  body over the size limit
      RateLimitExceeded    429 rate_limit_error       reason "requests" | "tokens" | "concurrency";
                                                      carries retry_after (s), x-ratelimit-* headers
        BudgetExceeded     429 rate_limit_error       code "budget_exceeded": a key over its day,
                                                      week, month or total budget; x-budget-*
      UpstreamError        502 upstream_error         bad answer from the upstream
      UpstreamUnavailable  503 service_unavailable    no upstream ready or reachable; Retry-After
      UpstreamTimeout      504 timeout_error          no first byte within the timeout
      ClientGone           499 client_closed_request  the client hung up before its request was
                                                      read (counted; nobody is left to answer)

The envelope is ``{"error": {"message", "type", "param", "code"}}``; ``code`` is a short
string such as ``"rate_limit_exceeded"`` or ``None``. :func:`normalise_upstream_error`
rewrites vLLM's bare ``{"error": "Unauthorized"}`` and the old flat
``{"object": "error", "message": ..}`` shape into the same envelope.

``/v1/messages`` answers in Anthropic's envelope instead,
``{"type": "error", "error": {"type", "message"}}`` with Anthropic's error types
(:data:`ANTHROPIC_TYPES`, by status: docs/gateway-bodies.md#errors-on-v1messages):
:func:`anthropic_error_body` for the gateway's own errors, :func:`normalise_anthropic_error`
for every upstream error (vLLM answers a body it refuses in the OpenAI envelope there, and
other errors with its own exception names as the type).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class GatewayError(Exception):
    """Base class: an error the gateway answers itself, as an OpenAI envelope."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers: dict[str, str] = dict(headers or {})

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.error_type, self.param, self.code)

    def body(self) -> bytes:
        return json.dumps(self.envelope()).encode()


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status_code = 403
    error_type = "permission_error"
    default_code = "model_not_allowed"


class NotFound(GatewayError):
    status_code = 404
    error_type = "not_found_error"


class PayloadTooLarge(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimitExceeded(GatewayError):
    """429 with ``Retry-After`` and the ``x-ratelimit-*`` headers.

    ``reason`` is ``"requests"``, ``"tokens"`` or ``"concurrency"``; ``retry_after`` is in
    seconds; ``ratelimit_headers`` holds the ``x-ratelimit-{limit,remaining,reset}-{requests,
    tokens}`` values the limiter computed.
    """

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        retry_after: float,
        ratelimit_headers: dict[str, str] | None = None,
    ) -> None:
        headers = dict(ratelimit_headers or {})
        headers["retry-after"] = str(max(1, int(retry_after + 0.999)))
        super().__init__(message, headers=headers)
        self.reason = reason
        self.retry_after = retry_after
        self.ratelimit_headers = dict(ratelimit_headers or {})


class BudgetExceeded(RateLimitExceeded):
    """429 ``budget_exceeded``: the key has spent a budget (:mod:`gateway.ledger.budgets`);
    its headers say which window, what was allowed and when the window resets."""

    default_code = "budget_exceeded"


class UpstreamError(GatewayError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "bad_gateway"


# Retry-After on a 503 the gateway answers itself: about one readiness probe (the default
# HealthSettings.interval), after which a replica that came back is in rotation again.
RETRY_AFTER_S = 5


class UpstreamUnavailable(GatewayError):
    """503 with ``Retry-After`` (:data:`RETRY_AFTER_S` unless ``headers`` give one)."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "upstream_unavailable"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        headers = {"retry-after": str(RETRY_AFTER_S), **(headers or {})}
        super().__init__(message, param=param, code=code, headers=headers)


class UpstreamTimeout(GatewayError):
    status_code = 504
    error_type = "timeout_error"
    default_code = "upstream_timeout"


class ClientGone(GatewayError):
    status_code = 499  # NGINX's "client closed request"
    error_type = "client_closed_request"


def error_envelope(
    message: str, error_type: str, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


_TYPE_BY_STATUS = {
    400: InvalidRequest.error_type,
    401: AuthenticationFailed.error_type,
    403: PermissionDenied.error_type,
    404: NotFound.error_type,
    413: PayloadTooLarge.error_type,
    429: RateLimitExceeded.error_type,
    502: UpstreamError.error_type,
    503: UpstreamUnavailable.error_type,
    504: UpstreamTimeout.error_type,
}


def normalise_upstream_error(status: int, body: bytes) -> bytes | None:
    """The envelope for an upstream error body that is not one already; ``None`` if it is.

    vLLM's ``--api-key`` answers ``{"error": "Unauthorized"}`` and versions before 0.10.1
    answered ``{"object": "error", "message": .., "code": 400}``
    (docs/vllm-server.md#error-envelopes).
    """
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return None
    message = f"upstream answered {status}"
    if isinstance(parsed, dict):
        if isinstance(parsed.get("error"), str):
            message = parsed["error"]
        elif isinstance(parsed.get("message"), str):
            message = parsed["message"]
    error_type = _TYPE_BY_STATUS.get(status, "upstream_error")
    return json.dumps(error_envelope(message, error_type, None, status)).encode()


# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors); a
# status it does not list is the nearest one's type: 502 is api_error (the upstream's fault),
# 503 overloaded_error (Anthropic's 529, "temporarily overloaded": the SDK retries both).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_envelope(message: str, status: int) -> dict[str, Any]:
    fallback = "api_error" if status >= 500 else "invalid_request_error"
    error_type = ANTHROPIC_TYPES.get(status, fallback)
    return {"type": "error", "error": {"type": error_type, "message": message}}


def anthropic_error_body(exc: GatewayError) -> bytes:
    """``exc`` in Anthropic's envelope."""
    return json.dumps(anthropic_envelope(exc.message, exc.status_code)).encode()


def normalise_anthropic_error(status: int, body: bytes) -> bytes:
    """Any upstream error body in Anthropic's envelope, its message kept."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    message = f"upstream answered {status}"
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
        elif isinstance(error, str):
            message = error
        elif isinstance(parsed.get("message"), str):
            message = parsed["message"]
    return json.dumps(anthropic_envelope(message, status)).encode()
