"""Webhook bodies of an alert: plain JSON (``ALERT_WEBHOOK_FORMAT=json``) or a Microsoft Teams message
with an Adaptive Card (``teams``), the shape a Teams Workflows "When a Teams webhook request is received"
trigger posts to a channel::

    {"type": "message",
     "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null,
                      "content": {"type": "AdaptiveCard", "version": "1.4", "body": [...], ...}}]}

Workflows accept Adaptive Cards only (not the legacy MessageCard) and a message of at most 28 KB, so
the card carries the same facts as the JSON body with the error text shortened.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from refresh.monitoring.freshness import AlertEvent, duration_text

FORMATS = ("json", "teams")
ADAPTIVE_CARD_VERSION = "1.4"
ADAPTIVE_CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
MAX_CARD_ERROR = 2000

_TITLES = {
    "refresh_failed": "Refresh failed",
    "refresh_recovered": "Refresh recovered",
    "freshness_breached": "Freshness objective breached",
    "freshness_recovered": "Freshness objective met again",
}
_GOOD = frozenset({"refresh_recovered", "freshness_recovered"})


def status_url(event: AlertEvent, base_url: str | None) -> str | None:
    """Where to look: the job's status for refresh events, the dataset's status page for freshness."""
    if not base_url:
        return None
    base = base_url.rstrip("/")
    if event.event.startswith("refresh_") and event.job_id:
        return f"{base}/api/refreshes/{quote(event.job_id, safe='')}"
    return f"{base}/api/status?dataset={quote(event.dataset, safe='')}"


def summary(event: AlertEvent) -> str:
    """One line for people."""
    name = event.dataset_name or event.dataset
    where = f" in {event.workspace}" if event.workspace else ""
    if event.event == "refresh_failed":
        why = f": {event.error_code}" if event.error_code else ""
        return f"Refresh of {name}{where} ended {event.status}{why}"
    if event.event == "refresh_recovered":
        return f"Refresh of {name}{where} completed again after failures"
    slo = f" (objective {duration_text(event.slo_seconds)})" if event.slo_seconds else ""
    if event.event == "freshness_breached":
        return f"{name}{where} is {duration_text(event.lag_seconds)} behind the lake{slo}"
    return f"{name}{where} is within its freshness objective again{slo}"


def json_body(event: AlertEvent, base_url: str | None) -> dict[str, Any]:
    """The JSON webhook body: every fact of the event, ``status_url`` and a human ``summary``."""
    body = event.to_json()
    body["status_url"] = status_url(event, base_url)
    body["summary"] = summary(event)
    return body


def teams_body(event: AlertEvent, base_url: str | None) -> dict[str, Any]:
    """A Teams message with one Adaptive Card carrying the same facts as :func:`json_body`."""
    url = status_url(event, base_url)
    facts = [
        ("Event", event.event), ("Dataset", event.dataset_name or event.dataset), ("Key", event.dataset),
        ("Workspace", event.workspace), ("Status", event.status), ("Error code", event.error_code),
        ("Job", event.job_id), ("Lag", duration_text(event.lag_seconds) if event.lag_seconds else "0 s"),
        ("Objective", duration_text(event.slo_seconds) if event.slo_seconds else None),
        ("Occurred at", event.occurred_at), ("Alert id", event.id),
    ]
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": _TITLES.get(event.event, event.event), "weight": "Bolder", "size": "Medium",
         "color": "Good" if event.event in _GOOD else "Attention", "wrap": True},
        {"type": "TextBlock", "text": summary(event), "wrap": True},
        {"type": "FactSet", "facts": [{"title": t, "value": str(v)} for t, v in facts if v not in (None, "")]},
    ]
    if event.error_message:
        text = event.error_message
        if len(text) > MAX_CARD_ERROR:
            text = text[:MAX_CARD_ERROR] + " …"
        body.append({"type": "TextBlock", "text": text, "wrap": True, "isSubtle": True, "fontType": "Monospace"})
    card: dict[str, Any] = {"type": "AdaptiveCard", "$schema": ADAPTIVE_CARD_SCHEMA,
                            "version": ADAPTIVE_CARD_VERSION, "body": body, "msteams": {"width": "Full"}}
    if url:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open status", "url": url}]
    return {"type": "message",
            "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": card}]}


def render(event: AlertEvent, fmt: str, base_url: str | None) -> dict[str, Any]:
    """The body for ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "teams":
        return teams_body(event, base_url)
    if fmt == "json":
        return json_body(event, base_url)
    raise ValueError(f"unknown alert format {fmt!r}; use one of {', '.join(FORMATS)}")
