"""Alert delivery: each event is POSTed to ``ALERT_WEBHOOK_URL`` through the queue, at least once.

Flow: the transition that causes an event stores it in the dataset's outbox (refresh/monitoring/freshness.py,
same ETag-guarded write). :meth:`Alerter.enqueue` then creates the event's row in the alerts table
(idempotent: the RowKey is the event's stable id) and sends an ``alert`` message on the refresh
queue; the queue trigger hands it to :meth:`Alerter.handle`, which claims the row (ETag), POSTs with a
timeout and records the outcome. A failure is retried by sending the message again with a visibility
delay (exponential back-off, ``Retry-After`` honoured), so nothing ever waits in a function and a
webhook that is down never blocks or fails a refresh. A row already ``delivered`` makes any duplicate
message a no-op. Every delivery attempt writes one log line; failures stay on the row for the status
page (:meth:`AlertStore.problems`).

Queue message, version 1 (base64 on the wire like every message of the queue, see refresh/jobs/messages.py)::

    {"v": 1, "type": "alert", "id": "<32 hex: the event id>", "dataset": "<key>", "attempt": 0,
     "sent_at": "<ISO-8601>"}

Alerts table: PartitionKey ``alert``, RowKey the event id; columns ``event``, ``dataset``,
``occurred_at``, ``created_at``, ``status`` (``queued`` | ``sending`` | ``retrying`` | ``delivered`` |
``failed`` | ``off``), ``attempts``, ``last_attempt_at``, ``next_attempt_at``, ``delivered_at``,
``http_status``, ``last_error`` and the event itself (JSON ``event_json``).

The webhook URL is a secret (a Teams Workflows URL carries its signature): it is never logged nor
stored; errors are described by type and HTTP status only.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from refresh.core import storage as tables
from refresh.core.clock import Clock, iso, parse_iso
from refresh.core.settings import ALERT_SETTINGS as ALERT_SETTINGS  # re-exported
from refresh.core.settings import SettingsError, number_setting, url_setting
from refresh.jobs import messages
from refresh.monitoring.alert_formats import FORMATS, render
from refresh.monitoring.freshness import AlertEvent

log = logging.getLogger(__name__)
delivery_log = logging.getLogger("refresh.alert")

PK_ALERT = "alert"
MESSAGE_TYPE = "alert"
MESSAGE_VERSION = 1
MAX_ATTEMPTS = 10
FIRST_RETRY_SECONDS = 30.0
MAX_RETRY_SECONDS = 3600.0
MAX_CONFLICT_RETRIES = 10
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
STATUSES = ("queued", "sending", "retrying", "delivered", "failed", "off")
DONE = frozenset({"delivered", "failed", "off"})

# declared with every other setting in refresh/core/settings.py (SETTINGS), re-exported here


# -- settings ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertSettings:
    """Where and how alerts are sent."""

    webhook_url: str = ""
    format: str = "json"
    timeout: float = 10.0
    base_url: str | None = None
    problem: str | None = None   # the settings could not be used (see :meth:`load`)

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url) and self.problem is None

    @classmethod
    def load(cls, env: Mapping[str, str]) -> AlertSettings:
        """Like :meth:`from_env`, but never raises: a bad setting becomes :attr:`problem`, and every alert
        is then recorded as failed with that problem (visible on the status page) instead of failing the
        refresh that caused it."""
        try:
            return cls.from_env(env)
        except SettingsError as exc:
            log.error("alerts cannot be sent: %s", exc)
            return cls(problem=str(exc))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AlertSettings:
        """Read and validate the ``ALERT_*`` settings; raises :class:`SettingsError` naming the setting."""
        url = (env.get("ALERT_WEBHOOK_URL") or "").strip()
        if url:
            url_setting("ALERT_WEBHOOK_URL", url, secret=True)
        fmt = (env.get("ALERT_WEBHOOK_FORMAT") or "json").strip().lower()
        if fmt not in FORMATS:
            raise SettingsError("ALERT_WEBHOOK_FORMAT", f"{fmt!r} is not one of {', '.join(FORMATS)}")
        timeout = number_setting("ALERT_WEBHOOK_TIMEOUT_SECONDS",
                                 (env.get("ALERT_WEBHOOK_TIMEOUT_SECONDS") or "10").strip(), float, 1, 120)
        base = (env.get("ALERT_STATUS_BASE_URL") or "").strip()
        if base:
            url_setting("ALERT_STATUS_BASE_URL", base)
        elif (env.get("WEBSITE_HOSTNAME") or "").strip():
            base = f"https://{env['WEBSITE_HOSTNAME'].strip()}"
        return cls(webhook_url=url, format=fmt, timeout=timeout, base_url=base.rstrip("/") or None)


# -- queue message ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertMessage:
    """An ``alert`` message on the refresh queue: deliver the event with this id."""

    id: str
    dataset: str
    attempt: int = 0
    sent_at: str = ""

    def encode(self) -> str:
        return json.dumps({"v": MESSAGE_VERSION, "type": MESSAGE_TYPE, "id": self.id, "dataset": self.dataset,
                           "attempt": self.attempt, "sent_at": self.sent_at}, separators=(",", ":"))


def is_alert_message(body: str | bytes) -> bool:
    """True if ``body`` is (meant to be) an alert message; the queue trigger routes it to :class:`Alerter`."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if len(body) > 4096:
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("type") == MESSAGE_TYPE


def decode_alert(body: str | bytes) -> AlertMessage:
    """Parse an alert message; :class:`messages.BadMessage` says what is wrong."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise messages.BadMessage(f"alert message is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("type") != MESSAGE_TYPE:
        raise messages.BadMessage("not an alert message (type must be 'alert')")
    problems = []
    if data.get("v") != MESSAGE_VERSION:
        problems.append(f"v: unsupported alert message version {data.get('v')!r}")
    if not isinstance(data.get("id"), str) or not _ID_RE.match(data["id"]):
        problems.append(f"id: must be 32 lowercase hex digits, got {data.get('id')!r}"[:200])
    if not isinstance(data.get("dataset"), str) or not _KEY_RE.match(data["dataset"]):
        problems.append(f"dataset: not a dataset key: {data.get('dataset')!r}"[:200])
    attempt = data.get("attempt", 0)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or not 0 <= attempt <= 1000:
        problems.append(f"attempt: must be a whole number 0..1000, got {attempt!r}"[:200])
    if problems:
        raise messages.BadMessage("; ".join(problems))
    return AlertMessage(id=data["id"], dataset=data["dataset"], attempt=attempt, sent_at=str(data.get("sent_at", "")))


# -- the alerts table --------------------------------------------------------------------------------------


class AlertStore:
    """One row per alert event (PartitionKey ``alert``, RowKey the event id)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def create(self, event: AlertEvent, status: str, now: datetime,
               last_error: str | None = None) -> tuple[dict[str, Any], bool]:
        """The event's row, created if new; returns ``(row, created)``."""
        row: dict[str, Any] = {"PartitionKey": PK_ALERT, "RowKey": event.id, "event": event.event,
                               "dataset": event.dataset, "occurred_at": event.occurred_at, "created_at": iso(now),
                               "status": status, "attempts": 0, "job_id": event.job_id or "",
                               "last_error": (last_error or "")[:1000]}
        tables.put_json(row, "event_json", event.to_json())
        try:
            tables.write(self.table, row, None)
            return row, True
        except tables.Conflict:
            existing = self.get(event.id)
            return (dict(existing) if existing is not None else row), False

    def get(self, alert_id: str) -> Any | None:
        return tables.get_entity(self.table, PK_ALERT, alert_id)

    def update(self, alert_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any] | None:
        """Read-modify-write ETag-guarded; ``change`` returns the fields to set (None: no change)."""
        def apply(data: dict[str, Any]) -> bool:
            fields = change(dict(data))
            if fields is None:
                return False
            data.update(fields)
            return True

        entity = tables.update(self.table, PK_ALERT, alert_id, apply, attempts=MAX_CONFLICT_RETRIES,
                               what=f"alert {alert_id}")
        return dict(entity) if entity is not None else None

    def problems(self, limit: int = 20, dataset: str | None = None) -> list[dict[str, Any]]:
        """Alerts that failed or are being retried, newest first (for the status page); only ``dataset``'s
        when given (filtered by the query, so another dataset's many problems never hide its own)."""
        where = "PartitionKey eq @pk and (status eq 'failed' or status eq 'retrying')"
        parameters = {"pk": PK_ALERT}
        if dataset is not None:
            where += " and dataset eq @ds"
            parameters["ds"] = dataset
        rows = [to_public(e) for e in self.table.query_entities(where, parameters=parameters)]
        rows.sort(key=lambda r: r.get("created_at") or "", reverse=True)
        return rows[:limit]

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = [to_public(e) for e in self.table.query_entities("PartitionKey eq @pk", parameters={"pk": PK_ALERT})]
        rows.sort(key=lambda r: r.get("created_at") or "", reverse=True)
        return rows[:limit]

    def prune(self, older_than: datetime) -> int:
        """Delete rows created before ``older_than`` that are done (delivered, failed or off)."""
        removed = 0
        for entity in self.table.query_entities("PartitionKey eq @pk and created_at lt @t",
                                                parameters={"pk": PK_ALERT, "t": iso(older_than)}):
            if tables.value(entity, "status") in DONE:
                try:
                    tables.delete(self.table, PK_ALERT, entity["RowKey"], entity.metadata["etag"])
                    removed += 1
                except tables.Conflict:
                    pass
        return removed


def to_public(entity: Any) -> dict[str, Any]:
    """An alerts-table row as plain JSON-able data (the event decoded under ``event_body``)."""
    out = {k: tables.value(entity, k) for k in ("event", "dataset", "occurred_at", "created_at", "status",
                                                  "attempts", "last_attempt_at", "next_attempt_at", "delivered_at",
                                                  "http_status", "last_error", "job_id")}
    out["id"] = entity["RowKey"]
    out["event_body"] = tables.get_json(entity, "event_json")
    return {k: (None if v == "" else v) for k, v in out.items()}


# -- sending and delivering ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """What one POST did."""

    ok: bool
    http_status: int | None
    error: str | None
    retryable: bool
    retry_after: float | None = None


class Alerter:
    """Queues alert events and delivers them; safe on any number of instances."""

    def __init__(self, store: AlertStore, queue: Any, settings: AlertSettings, clock: Clock,
                 session: Any = None, rng: random.Random | None = None) -> None:
        self.store = store
        self.queue = queue
        self.settings = settings
        self.clock = clock
        self._session = session
        self.rng = rng or random.Random()

    @property
    def session(self) -> Any:
        if self._session is None:
            import requests

            self._session = requests.Session()
        return self._session

    # queueing --------------------------------------------------------------------------------------
    def enqueue(self, events: Sequence[AlertEvent]) -> list[str]:
        """Record each event and queue its delivery (or record it as ``off``); returns the ids handled.

        Idempotent: an event already delivered, failed or off is not queued again; one still on its
        way gets a second message, which the first delivery turns into a no-op.
        """
        done = []
        problem = self.settings.problem
        for event in events:
            now = self.clock.now()
            status = "failed" if problem else "queued" if self.settings.enabled else "off"
            row, created = self.store.create(event, status, now, last_error=problem)
            if tables.value(row, "status") in DONE:
                if created and status != "queued":
                    self._log(event.id, event.event, event.dataset, status, 0, None, None,
                              problem or "ALERT_WEBHOOK_URL is empty: recorded, not sent")
                done.append(event.id)
                continue
            messages.send(self.queue, AlertMessage(event.id, event.dataset, 0, iso(now)), 0)
            done.append(event.id)
        return done

    # delivering ------------------------------------------------------------------------------------
    def handle(self, body: str | bytes) -> str:
        """Deliver one alert message; returns what happened (delivered, retry, failed, duplicate, ...).

        Raises only when storage fails (the host then redelivers the message).
        """
        try:
            msg = decode_alert(body)
        except messages.BadMessage as exc:
            log.error("rejected alert message: %s", exc)
            return "rejected"
        entity = self.store.get(msg.id)
        if entity is None:
            log.warning("alert %s: no such alert row; message dropped", msg.id)
            return "unknown"
        event = AlertEvent.from_json(tables.get_json(entity, "event_json") or {})
        status = tables.value(entity, "status")
        if status in DONE:
            return "duplicate"
        now = self.clock.now()
        if not self.settings.enabled:
            problem = self.settings.problem
            final = "failed" if problem else "off"
            self.store.update(msg.id, lambda row: None if row.get("status") in DONE else
                              {"status": final, "last_error": (problem or "")[:1000]})
            self._log(msg.id, event.event, event.dataset, final, 0, None, None,
                      problem or "ALERT_WEBHOOK_URL is empty: recorded, not sent")
            return final
        lease = timedelta(seconds=2 * self.settings.timeout + 30)
        claimed: dict[str, Any] = {}

        def claim(row: dict[str, Any]) -> dict[str, Any] | None:
            claimed.clear()
            if row.get("status") in DONE:
                claimed["state"] = "duplicate"
                return None
            until = row.get("sending_until")
            if row.get("status") == "sending" and until and parse_iso(until) > now:
                claimed["state"] = "busy"
                claimed["wait"] = (parse_iso(until) - now).total_seconds() + 1
                return None
            attempts = int(tables.value(row, "attempts", 0) or 0) + 1
            claimed.update(state="claimed", attempts=attempts)
            return {"status": "sending", "sending_until": iso(now + lease), "attempts": attempts,
                    "last_attempt_at": iso(now)}

        self.store.update(msg.id, claim)
        if claimed.get("state") == "duplicate":
            return "duplicate"
        if claimed.get("state") == "busy":  # another instance is sending it right now; look again after its lease
            messages.send(self.queue, AlertMessage(msg.id, msg.dataset, msg.attempt, iso(now)), claimed["wait"])
            return "busy"
        attempts = claimed["attempts"]
        result = self._post(event)
        now = self.clock.now()
        if result.ok:
            self.store.update(msg.id, lambda row: {"status": "delivered", "delivered_at": iso(now),
                                                   "http_status": result.http_status, "last_error": "",
                                                   "sending_until": "", "next_attempt_at": ""})
            self._log(msg.id, event.event, event.dataset, "delivered", attempts, result.http_status, None, None)
            return "delivered"
        if result.retryable and attempts < MAX_ATTEMPTS:
            delay = self._backoff(attempts, result.retry_after)
            self.store.update(msg.id, lambda row: {"status": "retrying", "http_status": result.http_status or 0,
                                                   "last_error": result.error, "sending_until": "",
                                                   "next_attempt_at": iso(now + timedelta(seconds=delay))})
            messages.send(self.queue, AlertMessage(msg.id, msg.dataset, attempts, iso(now)), delay)
            self._log(msg.id, event.event, event.dataset, "retry", attempts, result.http_status, delay, result.error)
            return "retry"
        reason = result.error if not result.retryable else f"gave up after {attempts} attempts: {result.error}"
        self.store.update(msg.id, lambda row: {"status": "failed", "http_status": result.http_status or 0,
                                               "last_error": reason, "sending_until": "", "next_attempt_at": ""})
        self._log(msg.id, event.event, event.dataset, "failed", attempts, result.http_status, None, reason)
        return "failed"

    def give_up(self, body: str | bytes, reason: str) -> None:
        """The message could not be handled (poison queue): record the alert as failed."""
        try:
            msg = decode_alert(body)
        except messages.BadMessage as exc:
            log.error("rejected alert message: %s", exc)
            return
        row = self.store.update(msg.id, lambda r: None if r.get("status") in DONE else
                                {"status": "failed", "last_error": reason[:1000], "sending_until": "",
                                 "next_attempt_at": ""})
        event = tables.value(row, "event", "?") if row else "?"
        self._log(msg.id, event, msg.dataset, "failed", msg.attempt, None, None, reason)

    def _post(self, event: AlertEvent) -> Attempt:
        import requests

        body = json.dumps(render(event, self.settings.format, self.settings.base_url), separators=(",", ":"))
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Alert-Id": event.id}
        timeout = self.settings.timeout
        try:
            response = self.session.post(self.settings.webhook_url, data=body.encode("utf-8"), headers=headers,
                                         timeout=(timeout, timeout), allow_redirects=False)
        except requests.Timeout:
            return Attempt(False, None, f"no answer within {timeout:g} s", True)
        except requests.ConnectionError as exc:
            return Attempt(False, None, f"connection failed ({_root_cause(exc)})", True)
        except requests.RequestException as exc:
            return Attempt(False, None, f"request failed ({type(exc).__name__})", False)
        code = response.status_code
        if 200 <= code < 300:
            return Attempt(True, code, None, False)
        text = (response.text or "").strip().replace("\n", " ")[:300]
        error = f"HTTP {code}{': ' + text if text else ''}"
        if 300 <= code < 400:
            return Attempt(False, code, f"HTTP {code}: redirects are not followed; set the final URL", False)
        retryable = code >= 500 or code in (408, 429)
        return Attempt(False, code, error, retryable, _retry_after(response.headers.get("Retry-After"),
                                                                    self.clock.now()))

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        delay = min(FIRST_RETRY_SECONDS * 2 ** (attempts - 1), MAX_RETRY_SECONDS) * (0.8 + 0.4 * self.rng.random())
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_SECONDS))
        return float(round(delay, 1))

    @staticmethod
    def _log(alert_id: str, event: str, dataset: str, outcome: str, attempt: int, http_status: int | None,
             retry_in: float | None, error: str | None) -> None:
        level = logging.INFO if outcome in ("delivered", "off") else logging.WARNING
        delivery_log.log(
            level, "alert delivery: id=%s event=%s dataset=%s outcome=%s attempt=%s http_status=%s retry_in=%s "
            "error=%s", alert_id, event, dataset, outcome, attempt, http_status or "-",
            f"{retry_in:.0f}s" if retry_in is not None else "-", error or "-",
            extra={"alert_delivery": {"id": alert_id, "event": event, "dataset": dataset, "outcome": outcome,
                                      "attempt": attempt, "http_status": http_status, "retry_in": retry_in,
                                      "error": error}})


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's type (its text may contain the URL, which is a secret)."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return type(seen).__name__


def _retry_after(value: str | None, now: datetime) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - now).total_seconds())
