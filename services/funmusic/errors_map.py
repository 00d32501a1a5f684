"""DashScope error bodies to songbot's typed errors, by ``code`` first and HTTP status second.

The table is ``docs/dashscope.md`` section 4. Classification never trusts HTTP 200 (a mid-stream ``event:error``
arrives on a 200 response) and never trusts the SDK's status either: the code decides. An unknown code falls back to
the status: 5xx/408/409/429 are retryable, other 4xx are not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from services.errors import (
    AuthError,
    ErrorBody,
    ModerationError,
    ParameterError,
    ServerError,
    ServiceError,
    ThrottledError,
)

AUTH_CODES = frozenset(
    {
        "InvalidApiKey",
        "NOT AUTHORIZED",
        "Arrearage",
        "PrepaidBillOverdue",
        "PostpaidBillOverdue",
        "CommodityNotPurchased",
        "AllocationQuota.FreeTierOnly",
        "ModelNotFound",
        "model_not_found",
    }
)
MODERATION_CODES = frozenset(
    {"DataInspectionFailed", "data_inspection_failed", "IPInfringementSuspect", "CustomRoleBlocked", "FaqRuleBlocked"}
)
SERVER_CODES = frozenset(
    {
        "InternalError",
        "InternalError.Algo",
        "SystemError",
        "ModelServiceFailed",
        "RequestTimeOut",
        "ModelServingError",
        "ModelUnavailable",
        "GatewayTimeout",
    }
)
log = logging.getLogger(__name__)

#: The longest request id, audio id or error code kept: the store's columns hold 100 characters, and a longer
#: one is the service's bookkeeping gone wrong, never a reason to lose a song.
ID_MAX_CHARS = 100

#: Throttling codes that waiting a few seconds will not cure (a spent quota needs an operator).
NOT_RETRYABLE_THROTTLING = frozenset({"Throttling.AllocationQuota"})
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def _is_auth(code: str) -> bool:
    return (
        code in AUTH_CODES
        or code.startswith("AccessDenied")
        or code.endswith(".AccessDenied")
        or code.endswith("BillOverdue")
    )


def clamp_id(value: object, what: str) -> str | None:
    """A request id, audio id or error code as songbot keeps it: text of at most :data:`ID_MAX_CHARS` characters,
    or None. Anything else (a longer value, an object) is cut or dropped with a WARNING, never raised."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        log.warning("DashScope sent a %s that is not text (%s); ignoring it", what, type(value).__name__)
        return None
    text = value if isinstance(value, str) else str(value)
    if len(text) > ID_MAX_CHARS:
        log.warning(
            "DashScope sent a %d-character %s; keeping its first %d characters: %s…",
            len(text),
            what,
            ID_MAX_CHARS,
            text[:ID_MAX_CHARS],
        )
        text = text[:ID_MAX_CHARS]
    return text


def parse_error_body(raw: bytes | str, status: int | None) -> ErrorBody:
    """Read ``{code, message, request_id}`` from an error body; tolerate anything else (the code becomes "")."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        snippet = " ".join(text.split())[:200]
        return ErrorBody(code="", message=snippet or "empty error body", request_id=None, status=status)
    return body_from_json(obj, status)


def body_from_json(obj: Mapping[str, object], status: int | None) -> ErrorBody:
    code = obj.get("code")
    message = obj.get("message")
    return ErrorBody(
        code=clamp_id(str(code) if code is not None else None, "error code") or "",
        message=str(message) if message is not None else "",
        request_id=clamp_id(obj.get("request_id"), "request_id"),
        status=status,
    )


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), or None."""
    raw_ms = headers.get("retry-after-ms") or headers.get("Retry-After-Ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after") or headers.get("Retry-After")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        when = parsedate_to_datetime(raw)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def classify(
    body: ErrorBody,
    *,
    retry_after: float | None = None,
    audio_delivered: bool = False,
    where: str = "",
) -> ServiceError:
    """The typed error for a DashScope error body. ``where`` says which part of the exchange it came from."""
    code = body.code
    message = f"DashScope error{f' ({where})' if where else ''}: {body.message or 'no message'}"

    def make(cls: type[ServiceError], retryable: bool | None = None) -> ServiceError:
        return cls(
            message,
            code=code or None,
            request_id=body.request_id,
            status=body.status,
            retryable=retryable,
            audio_delivered=audio_delivered,
        )

    if code:
        if _is_auth(code):
            return make(AuthError)
        if code in MODERATION_CODES:
            return make(ModerationError)
        if code.startswith("InvalidParameter") or code == "invalid_parameter":
            return make(ParameterError)
        if code.startswith("Throttling"):
            return _throttled(make(ThrottledError, code not in NOT_RETRYABLE_THROTTLING), retry_after)
        if code in SERVER_CODES:
            return make(ServerError)
    status = body.status
    if status == 429:
        return _throttled(make(ThrottledError), retry_after)
    if status is not None and (status >= 500 or status in RETRYABLE_STATUSES):
        return make(ServerError)
    if status in (401, 403):
        return make(AuthError)
    if status == 400:
        return make(ParameterError)
    return make(ServiceError, False)


def _throttled(err: ServiceError, retry_after: float | None) -> ServiceError:
    if isinstance(err, ThrottledError):
        err.retry_after = retry_after
    return err
