"""The Power BI error tree, and the one function that maps an HTTP answer onto it.

Every error carries what the service said: ``status`` (HTTP status, ``None`` when no answer came),
``code`` and ``message`` (from the ``{"error": {"code", "message"}}`` body), ``retry_after``
(seconds, from a numeric or HTTP-date ``Retry-After`` header) and ``request_id`` (the ``RequestId``
or ``x-ms-request-id`` response header, for support cases).

The client never sleeps or loops: callers decide what to do from the error's type.

======================  =====================================================  ======================
class                   raised for                                             what a caller does
======================  =====================================================  ======================
AuthenticationError     401/403 after the one token retry                       fail the job, alert
TokenError              the credential could not give a token (identity         retry (``is_retryable``)
                        endpoint down, 5xx, refused): a subclass of the above
NotFoundError           404                                                     fail the job
RefreshBusyError        400/409 "Another refresh request is already executing"  re-queue later/coalesce
DailyLimitError         shared capacity: 8 refreshes in 24 h ("Request          "quota exhausted"
                        Throttled")
ThrottledError          429 (``retry_after`` from Retry-After)                  re-queue after the delay
ServerError             5xx                                                     retry (``is_retryable``)
TransportError          timeout, connection error (``status`` None); the        retry (``is_retryable``)
                        request may have been accepted unless
                        ``before_request`` (the identity endpoint failed)
BadRequestError         any other 4xx                                           fail the job
NameResolutionError     a workspace/dataset name matched none or several        fix the configuration
NotRefreshableError     the dataset's ``isRefreshable`` is false                fix the configuration
======================  =====================================================  ======================
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any

from refresh.powerbi.models import clean_text

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "DailyLimitError",
    "NameResolutionError",
    "NotFoundError",
    "NotRefreshableError",
    "PowerBIError",
    "RefreshBusyError",
    "ServerError",
    "ThrottledError",
    "TokenError",
    "TransportError",
    "error_from_response",
    "parse_error_body",
    "parse_retry_after",
]

_BUSY_MARKER = "already executing"
_DAILY_LIMIT_MARKER = "refresh requests in last 24 hours exceeded limit"
_DAILY_LIMIT_CODE = "request throttled"
_MAX_BODY_IN_MESSAGE = 300


class PowerBIError(Exception):
    """Base class of every error raised by the Power BI layer."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        before_request: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: True when the failure happened before the request was sent (e.g. no token): it surely
        #: did nothing on the service. False for every error built from an HTTP answer.
        self.before_request = before_request
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.request_id = request_id

    @property
    def is_retryable(self) -> bool:
        """True when the same call may succeed if simply tried again later (5xx, transport)."""
        return False

    def __str__(self) -> str:
        parts = [self.message]
        details = []
        if self.status is not None:
            details.append(f"HTTP {self.status}")
        if self.code:
            details.append(f"code {self.code}")
        if self.retry_after is not None:
            details.append(f"retry after {self.retry_after:g} s")
        if self.request_id:
            details.append(f"request id {self.request_id}")
        if details:
            parts.append(f"({', '.join(details)})")
        return " ".join(parts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status!r}, code={self.code!r}, "
            f"retry_after={self.retry_after!r}, request_id={self.request_id!r})"
        )


class AuthenticationError(PowerBIError):
    """The token was refused (401/403 even after one fresh token) or could not be acquired."""


class TokenError(AuthenticationError):
    """The credential could not give a token; the request was not sent and may succeed later."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("before_request", True)
        super().__init__(message, **kwargs)

    @property
    def is_retryable(self) -> bool:
        """Always True: an identity endpoint that is down or throttled comes back."""
        return True


class NotFoundError(PowerBIError):
    """The workspace, dataset or refresh does not exist or is not visible to this identity (404)."""


class RefreshBusyError(PowerBIError):
    """Another refresh of the dataset is already executing (400 or 409); try again later."""


class DailyLimitError(PowerBIError):
    """The shared-capacity quota of refreshes in the last 24 hours is exhausted."""


class ThrottledError(PowerBIError):
    """Too many requests (429); ``retry_after`` says how many seconds to wait, when given."""


class ServerError(PowerBIError):
    """The service failed (5xx); the same request may succeed later."""

    @property
    def is_retryable(self) -> bool:
        """Always True: a server error is worth another try."""
        return True


class TransportError(PowerBIError):
    """No usable answer arrived: timeout, refused or dropped connection (``status`` is None)."""

    @property
    def is_retryable(self) -> bool:
        """Always True: a transport failure is worth another try."""
        return True


class BadRequestError(PowerBIError):
    """The service rejected the request (a 4xx not covered by a more specific class)."""


class NameResolutionError(PowerBIError):
    """A workspace or dataset name matched none or several items; ``found`` lists the candidates."""

    def __init__(self, message: str, *, found: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.found = found


class NotRefreshableError(PowerBIError):
    """The dataset cannot be refreshed (``isRefreshable`` is false, e.g. DirectQuery or live connection)."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date; None if absent/bad.

    A date in the past gives 0. ``now`` (epoch seconds) defaults to the wall clock.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN is not a delay
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def parse_error_body(body: bytes | str | None) -> tuple[str | None, str | None]:
    """(code, message) from a Power BI error body ``{"error": {"code", "message"}}``.

    Tolerant of other shapes (``{"message": ...}``) and of non-JSON text (kept, shortened, as message).
    """
    code, message = _parse_error_body(body)
    return (clean_text(code) if code else None), (clean_text(message) if message else None)


def _parse_error_body(body: bytes | str | None) -> tuple[str | None, str | None]:
    if not body:
        return None, None
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        payload = json.loads(text)
    except ValueError:
        return None, text.strip()[:_MAX_BODY_IN_MESSAGE] or None
    if not isinstance(payload, dict):
        return None, None
    error = payload.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        details = error.get("pbi.error")
        if not code and isinstance(details, dict):
            code = details.get("code")
        return (str(code) if code else None), (str(message) if message else None)
    if isinstance(error, str):
        return error, payload.get("message") if isinstance(payload.get("message"), str) else None
    message = payload.get("message") or payload.get("Message")
    return None, str(message) if message else None


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes | str | None,
    *,
    what: str = "Power BI request",
    now: float | None = None,
) -> PowerBIError:
    """Build the error for an HTTP answer that is not a success.

    ``headers`` should be case-insensitive (``requests`` gives such a mapping); ``what`` names
    the operation in the message, e.g. ``"POST .../refreshes"``.
    """
    code, message = parse_error_body(body)
    retry_after = parse_retry_after(headers.get("Retry-After"), now=now)
    request_id = headers.get("RequestId") or headers.get("x-ms-request-id")
    text = f"{what} failed: {message}" if message else f"{what} failed with HTTP {status}"
    kwargs: dict[str, Any] = {
        "status": status,
        "code": code,
        "retry_after": retry_after,
        "request_id": request_id,
    }
    lowered = (message or "").lower()

    if status == 429:
        return ThrottledError(text, **kwargs)
    if status in (400, 409) and _BUSY_MARKER in lowered:
        return RefreshBusyError(text, **kwargs)
    if 400 <= status < 500 and (_DAILY_LIMIT_MARKER in lowered or (code or "").lower() == _DAILY_LIMIT_CODE):
        return DailyLimitError(text, **kwargs)
    if status in (401, 403):
        return AuthenticationError(text, **kwargs)
    if status == 404:
        return NotFoundError(text, **kwargs)
    if 400 <= status < 500:
        return BadRequestError(text, **kwargs)
    if 500 <= status < 600:
        return ServerError(text, **kwargs)
    return PowerBIError(text, **kwargs)
