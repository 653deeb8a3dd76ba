"""The status page (``GET /api/status``): one self-contained HTML page, readable at a glance.

No scripts, no fonts or images from anywhere: CSS is inline and the timelines are inline SVG (bars by
duration, coloured by status, the details and Power BI's message in each bar's ``<title>``, which
browsers show on hover). The response carries a strict Content-Security-Policy (:data:`CSP`) so
even a rendering mistake could not run a script. Every value that reaches the page goes through
:func:`esc` (``html.escape``), including dataset keys and names from the config.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import azure.functions as func

from refresh.core.clock import parse_iso
from refresh.core.validation import readable
from refresh.jobs.outcomes import Status
from refresh.monitoring.freshness import BREACHED, CATCHING_UP, UNKNOWN, UP_TO_DATE

TIMELINE_ROWS = 12
"""Refreshes in each dataset's timeline on the overview (what the summary keeps)."""
HISTORY_ROWS = 50
"""Refreshes listed (and drawn) on a dataset's own page."""
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATUS_COLOURS: dict[str, str] = {
    Status.COMPLETED: "#2e7d32",
    Status.FAILED: "#c62828",
    Status.TIMED_OUT: "#e65100",
    Status.CANCELLED: "#6d4c41",
    Status.DISABLED: "#4e342e",
    Status.NOT_REFRESHABLE: "#6a1b9a",
    Status.REJECTED: "#ad1457",
    Status.SKIPPED: "#90a4ae",
    Status.RUNNING: "#1565c0",
    Status.WAITING: "#f9a825",
    Status.QUEUED: "#64b5f6",
}
FAILURES = frozenset({Status.FAILED, Status.TIMED_OUT, Status.CANCELLED, Status.DISABLED, Status.NOT_REFRESHABLE,
                      Status.REJECTED})
FRESHNESS_LABELS = {UP_TO_DATE: ("up to date", "#2e7d32"), CATCHING_UP: ("catching up", "#f9a825"),
                    BREACHED: ("breached", "#c62828"), UNKNOWN: ("unknown", "#9e9e9e")}
COMPACT_AFTER = 25
"""Above this many datasets, the overview draws timelines only for those that need attention (of their last
:data:`COMPACT_TIMELINE_ROWS` refreshes) and lists the healthy ones compactly (no timeline), so the page stays
small and readable at hundreds of datasets (under 400 KB at 300)."""
COMPACT_TIMELINE_ROWS = 10
_OTHER_COLOUR = "#9e9e9e"
_CODE_RE = re.compile(r"^[A-Za-z0-9_\-=/+.%]{1,512}$")
_CLASS_RE = re.compile(r"[^A-Za-z]")

CSS = """
:root { color-scheme: light; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #ffffff; --head: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto,
       "Helvetica Neue", Arial, sans-serif; color: var(--fg); background: var(--bg); }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 24px 0 8px; }
a { color: #0969da; text-decoration: none; } a:hover { text-decoration: underline; }
.meta, .muted { color: var(--muted); }
.small { font-size: 12px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 8px 10px; border-bottom: 1px solid var(--line); }
th { background: var(--head); font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .03em;
     color: var(--muted); }
tr.dataset td:first-child a { font-weight: 600; font-size: 15px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px;
         font-weight: 600; white-space: nowrap; }
.badge.s-Skipped, .badge.s-Queued, .badge.s-Waiting, .badge.f-catchingup { color: #1f2328; }
.summary { display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 8px 0; }
.alerts { border: 1px solid #cf222e; border-radius: 6px; padding: 8px 12px; margin: 12px 0; background: #fff5f5; }
details.healthy > summary { cursor: pointer; font-weight: 600; margin: 16px 0 8px; }
.error { color: #8b1a1a; font-size: 12px; margin-top: 4px; max-width: 360px; overflow-wrap: anywhere; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 14px; margin: 12px 0 16px; font-size: 12px; color: var(--muted); }
.legend span::before { content: ""; display: inline-block; width: 10px; height: 10px; border-radius: 2px;
                       margin-right: 5px; vertical-align: -1px; background: var(--c); }
.meter { display: block; width: 120px; height: 6px; background: #eaeef2; border-radius: 3px; margin-top: 4px;
         overflow: hidden; }
.meter > span { display: block; height: 100%; background: #1f883d; }
.meter.full > span { background: #cf222e; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f6f8fa; padding: 1px 4px;
       border-radius: 4px; white-space: nowrap; }
svg.timeline { display: block; }
svg.timeline rect:hover { opacity: .75; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 12px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
table.history td { font-size: 13px; }
td.wrap { max-width: 420px; overflow-wrap: anywhere; }
footer { margin-top: 24px; font-size: 12px; color: var(--muted); }
"""


# --------------------------------------------------------------------------------------------------
# small helpers


def esc(value: Any) -> str:
    """HTML-escape anything (None as empty), quotes included: safe in text and attribute values."""
    return "" if value is None else html.escape(str(value), quote=True)


def html_response(body: str, status: int = 200, extra: Mapping[str, str] | None = None) -> func.HttpResponse:
    """A page with the security headers. Text that is not valid Unicode (stored before it was refused)
    is shown as replacement characters instead of failing the page."""
    return func.HttpResponse(body=readable(body), status_code=status, headers={**HEADERS, **(extra or {})},
                             mimetype="text/html", charset="utf-8")


def link_params(code: str | None) -> str:
    """Query text to keep in the page's own links: the function key (``code``) the page was opened
    with, so the links work behind ``authLevel: function``. Empty when there is none."""
    if code and _CODE_RE.match(code):
        return "code=" + quote(code, safe="")
    return ""


def _href(links: str, dataset: str | None = None) -> str:
    parts = []
    if dataset is not None:
        parts.append("dataset=" + quote(dataset, safe=""))
    if links:
        parts.append(links)
    return "?" + "&".join(parts)


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parse_iso(str(value))
    except ValueError:
        return None


def fmt_duration(seconds: float | None) -> str:
    """``45 s``, ``5 min 3 s``, ``2 h 4 min``; empty for None."""
    if seconds is None:
        return ""
    total = max(0, round(float(seconds)))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60} s"
    return f"{total // 3600} h {total % 3600 // 60} min"


def relative(when: datetime, now: datetime) -> str:
    """``just now``, ``5 min ago``, ``in 2 h``."""
    delta = (when - now).total_seconds()
    span = abs(delta)
    if span < 45:
        return "just now"
    if span < 3600:
        text = f"{round(span / 60)} min"
    elif span < 48 * 3600:
        text = f"{round(span / 3600)} h"
    else:
        text = f"{round(span / 86400)} d"
    return f"in {text}" if delta > 0 else f"{text} ago"


def fmt_when(value: str | None, now: datetime) -> str:
    """A ``<time>`` element: relative text, the exact UTC time on hover."""
    when = _time(value)
    if when is None:
        return '<span class="muted">—</span>'
    exact = when.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f'<time datetime="{esc(value)}" title="{esc(exact)}">{esc(relative(when, now))}</time>'


def badge(status: str | None) -> str:
    word = status or "Unknown"
    return (f'<span class="badge s-{esc(_CLASS_RE.sub("", word))}" '
            f'style="background:{STATUS_COLOURS.get(word, _OTHER_COLOUR)}">{esc(word)}</span>')


def _list(values: Iterable[Any] | None) -> str:
    return ", ".join(str(v) for v in values or [])


def _short(text: str | None, limit: int = 160) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _bar_time(row: Mapping[str, Any]) -> datetime | None:
    return _time(row.get("started_at")) or _time(row.get("queued_at")) or _time(row.get("ended_at"))


def _duration(row: Mapping[str, Any], now: datetime) -> float:
    value = row.get("duration_seconds")
    if isinstance(value, int | float) and value >= 0:
        return float(value)
    started = _time(row.get("started_at"))
    if row.get("status") == Status.RUNNING and started is not None:
        return max(0.0, (now - started).total_seconds())
    return 0.0


def bar_title(row: Mapping[str, Any], now: datetime, limit: int = 1000) -> str:
    """The hover text of one timeline bar (plain text; escaped where it is used)."""
    status = row.get("status") or "Unknown"
    when = _bar_time(row)
    lines = [f"{status} · {when.strftime('%Y-%m-%d %H:%M:%S UTC') if when else 'time unknown'}"]
    duration = _duration(row, now)
    if duration:
        lines.append(f"duration {fmt_duration(duration)}{' so far' if status == Status.RUNNING else ''}")
    triggers = row.get("triggers") or ([row["trigger"]] if row.get("trigger") else [])
    if triggers:
        lines.append(f"trigger: {_list(triggers)}")
    if row.get("requested_by"):
        lines.append(f"requested by: {_list(row['requested_by'])}")
    if row.get("error_code") or row.get("error_message"):
        lines.append(f"{row.get('error_code') or 'error'}: {_short(row.get('error_message'), limit)}")
    elif row.get("detail"):
        lines.append(_short(row.get("detail"), limit // 2))
    lines.append(f"job {str(row.get('job_id') or '?')[:8]}")
    return "\n".join(lines)


def timeline_svg(rows: list[dict[str, Any]], now: datetime, *, label: str, width: int = 340, height: int = 52,
                 slots: int = TIMELINE_ROWS) -> str:
    """The last refreshes as an inline SVG bar chart, oldest left: bar height by duration (longest = full
    height; no duration, e.g. skipped or queued: a stub), colour by status, details on hover."""
    items = sorted((r for r in rows if _bar_time(r) is not None), key=lambda r: _bar_time(r))  # type: ignore[arg-type,return-value]
    if not items:
        return '<span class="muted small">no refreshes yet</span>'
    items = items[-slots:]
    slot = width / max(len(items), min(slots, 10))
    durations = [_duration(r, now) for r in items]
    longest = max(durations) or 1.0
    base = height - 1
    parts = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)}">',
             f'<line x1="0" y1="{base + 0.5}" x2="{width}" y2="{base + 0.5}" stroke="#d1d9e0" stroke-width="1"/>']
    offset = width - slot * len(items)  # newest at the right edge
    for i, (row, duration) in enumerate(zip(items, durations, strict=True)):
        status = str(row.get("status") or "Unknown")
        bar = 4.0 if duration <= 0 else 4.0 + (height - 8.0) * duration / longest
        x = offset + i * slot + slot * 0.14
        parts.append(
            f'<rect data-status="{esc(status)}" '
            f'x="{x:.1f}" y="{base - bar:.1f}" width="{max(slot * 0.72, 2):.1f}" height="{bar:.1f}" rx="1.5" '
            f'fill="{STATUS_COLOURS.get(status, _OTHER_COLOUR)}"><title>{esc(bar_title(row, now))}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def _legend() -> str:
    items = "".join(f'<span style="--c:{colour}">{esc(status)}</span>' for status, colour in STATUS_COLOURS.items())
    return f'<div class="legend" aria-label="status colours">{items}</div>'


def _page(title: str, body: str, *, auto_refresh: bool = True) -> str:
    refresh = '<meta http-equiv="refresh" content="60">' if auto_refresh else ""
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta name=\"referrer\" content=\"no-referrer\">"
            f"{refresh}<link rel=\"icon\" href=\"data:,\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


# --------------------------------------------------------------------------------------------------
# cells


def _last_cell(summary: Mapping[str, Any], now: datetime) -> str:
    last = summary.get("last_outcome")
    if not last:
        return '<span class="muted">no refresh yet</span>'
    when = last.get("ended_at") or last.get("started_at") or last.get("queued_at")
    out = f"{badge(last.get('status'))} {fmt_when(when, now)}"
    if last.get("duration_seconds") is not None:
        out += f' <span class="muted small">({esc(fmt_duration(last.get("duration_seconds")))})</span>'
    message = last.get("error_message") or (last.get("detail") if last.get("status") in FAILURES | {Status.SKIPPED}
                                             else None)
    if message:
        full = _short(message, 2000)
        hover = f' title="{esc(full)}"' if len(full) > 160 else ""  # the whole text only when it is cut
        out += f'<div class="error"{hover}>{esc(_short(message))}</div>'
    return out


def _activity_cell(summary: Mapping[str, Any], now: datetime) -> str:
    parts = []
    running = summary.get("running")
    if running:
        since = running.get("started_at") or running.get("claimed_at")
        parts.append(f"{badge(Status.RUNNING)} since {fmt_when(since, now)}"
                     f'<div class="muted small">job <code>{esc(str(running.get("job_id"))[:8])}</code>'
                     f"{' · ' + esc(_list(running.get('triggers'))) if running.get('triggers') else ''}</div>")
    pending = summary.get("pending")
    if pending:
        tables = pending.get("model_tables")
        what = "whole model" if not tables else _list(tables)
        parts.append(f"{badge(Status.QUEUED)} due {fmt_when(pending.get('due_at'), now)}"
                     f'<div class="muted small">{esc(_list(pending.get("triggers")))} · {esc(_short(what, 80))}'
                     f' · job <code>{esc(str(pending.get("job_id"))[:8])}</code></div>')
    return "".join(f"<div>{p}</div>" for p in parts) or '<span class="muted">idle</span>'


def _limit_cell(summary: Mapping[str, Any]) -> str:
    info = summary.get("daily_limit") or {}
    used, limit = int(info.get("used") or 0), info.get("limit")
    count, _, note = str(info.get("text") or f"{used} / {limit or 'unlimited'}").partition(" (")
    out = esc(count) + (f' <span class="muted small">({esc(note)}</span>' if note else "")
    if limit:
        share = min(100, round(100 * used / limit))
        full = " full" if used >= limit else ""
        out += f'<span class="meter{full}" title="{esc(used)} of {esc(limit)} in the last 24 h">' \
               f'<span style="width:{share}%"></span></span>'
    return out


def _schedule_cell(summary: Mapping[str, Any], now: datetime) -> str:
    schedule = summary.get("schedule")
    if not schedule:
        return '<span class="muted">—</span>'
    out = f"<code>{esc(schedule.get('expression'))}</code> <span class=\"muted small\">UTC</span>"
    if schedule.get("next_due_at"):
        out += f'<div class="small">next {fmt_when(schedule["next_due_at"], now)}</div>'
    if schedule.get("skip_if_unchanged"):
        out += '<div class="muted small">skipped when nothing changed</div>'
    return out


# --------------------------------------------------------------------------------------------------
# pages


def freshness_badge(freshness: Mapping[str, Any] | None) -> str:
    state = (freshness or {}).get("state") or UNKNOWN
    label, colour = FRESHNESS_LABELS.get(state, (state, _OTHER_COLOUR))
    return (f'<span class="badge f-{esc(_CLASS_RE.sub("", str(state)))}" data-freshness="{esc(state)}" '
            f'style="background:{colour}">{esc(label)}</span>')


def _freshness_cell(summary: Mapping[str, Any], now: datetime) -> str:
    """The dataset's freshness at a glance: its state, for how long, the lag against the objective."""
    freshness = summary.get("freshness") or {}
    state = freshness.get("state") or UNKNOWN
    out = freshness_badge(freshness)
    since = freshness.get("since")
    if state in (BREACHED, CATCHING_UP) and since:
        out += f" since {fmt_when(since, now)}"
    elif state == UP_TO_DATE and freshness.get("data_as_of"):
        out += f' <span class="small">data as of {fmt_when(freshness["data_as_of"], now)}</span>'
    text = freshness.get("text")
    if text and state not in (UP_TO_DATE, UNKNOWN):
        out += f'<div class="muted small">{esc(_short(text, 160))}</div>'
    return out


def needs_attention(summary: Mapping[str, Any]) -> bool:
    """Breached or catching up, last outcome a failure, or a job running or waiting."""
    state = (summary.get("freshness") or {}).get("state")
    last = summary.get("last_outcome") or {}
    return (state in (BREACHED, CATCHING_UP) or last.get("status") in FAILURES
            or bool(summary.get("running")) or bool(summary.get("pending")))


def timeline_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The bars of a dataset's timeline: its recent ended refreshes plus the running and the pending job."""
    rows = list(summary.get("recent") or [])
    running = summary.get("running")
    if running:
        rows.append({"status": Status.RUNNING, "job_id": running.get("job_id"), "triggers": running.get("triggers"),
                     "started_at": running.get("started_at") or running.get("claimed_at")})
    pending = summary.get("pending")
    if pending:
        rows.append({"status": Status.QUEUED, "job_id": pending.get("job_id"), "triggers": pending.get("triggers"),
                     "queued_at": pending.get("created_at"), "requested_by": pending.get("requested_by")})
    return rows


def _dataset_row(ds: Mapping[str, Any], now: datetime, links: str, *, timeline: bool,
                 slots: int = TIMELINE_ROWS) -> str:
    key = ds["key"]
    svg = timeline_svg(timeline_rows(ds), now, label=f"last refreshes of {key}", slots=slots) if timeline else ""
    recent = f'<td class="recent">{svg}</td>' if timeline else ""
    return (f'<tr class="dataset" id="ds-{esc(key)}" data-key="{esc(key)}">'
            f'<td><a href="{esc(_href(links, key))}">{esc(key)}</a>'
            f'<div class="muted small">{esc(ds.get("workspace"))} / {esc(ds.get("dataset"))}</div></td>'
            f'<td class="freshness">{_freshness_cell(ds, now)}</td>'
            f'<td class="last">{_last_cell(ds, now)}</td>'
            f'<td class="activity">{_activity_cell(ds, now)}</td>'
            f'<td class="limit">{_limit_cell(ds)}</td>'
            f'<td class="schedule">{_schedule_cell(ds, now)}</td>{recent}</tr>')


def _dataset_table(rows: list[str], timeline: bool, css: str = "datasets") -> str:
    recent = "<th>Recent refreshes (height: duration)</th>" if timeline else ""
    return (f"<table class=\"{css}\"><thead><tr><th>Dataset</th><th>Freshness</th><th>Last outcome</th>"
            f"<th>Pending / running</th><th>Refreshes in 24 h</th><th>Schedule</th>{recent}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _counts(datasets: list[dict[str, Any]]) -> str:
    states = [(ds.get("freshness") or {}).get("state") or UNKNOWN for ds in datasets]
    failing = sum(1 for ds in datasets if (ds.get("last_outcome") or {}).get("status") in FAILURES)
    parts = [f'<span class="count" data-state="{esc(state)}">{freshness_badge({"state": state})} '
             f"{states.count(state)}</span>" for state in FRESHNESS_LABELS if states.count(state)]
    parts.append(f'<span class="count" data-state="failing">last refresh failed: {failing}</span>')
    return f'<div class="summary" aria-label="datasets by state">{"".join(parts)}</div>'


def alerts_box(alerts: list[dict[str, Any]], now: datetime) -> str:
    """Alert deliveries that failed or are being retried (refresh/monitoring/alerts.py); empty when none."""
    if not alerts:
        return ""
    items = "".join(
        f'<li class="alert-problem" data-status="{esc(a.get("status"))}"><b>{esc(a.get("event"))}</b> of '
        f'<code>{esc(a.get("dataset"))}</code>: delivery {esc(a.get("status"))} after {esc(a.get("attempts"))} '
        f'attempt(s), last {fmt_when(a.get("last_attempt_at") or a.get("created_at"), now)}'
        f'{" (HTTP " + esc(a.get("http_status")) + ")" if a.get("http_status") else ""}'
        f'<div class="error">{esc(_short(a.get("last_error"), 300))}</div></li>' for a in alerts)
    return (f'<section class="alerts"><b>Alert deliveries failing ({len(alerts)} shown)</b>'
            f"<ul>{items}</ul></section>")


def render_overview(datasets: list[dict[str, Any]], now: datetime, links: str = "",
                    alerts: list[dict[str, Any]] | None = None) -> str:
    """The overview: one row per configured dataset (see :func:`refresh.surfaces.http_api.collect_datasets`).
    Up to :data:`COMPACT_AFTER` datasets: one table with timelines. Above: the datasets that need attention
    with timelines, then the healthy ones in a collapsed list without timelines."""
    if not datasets:
        table = '<p class="muted">No datasets are configured.</p>'
    elif len(datasets) <= COMPACT_AFTER:
        table = _dataset_table([_dataset_row(ds, now, links, timeline=True) for ds in datasets], True)
    else:
        urgent = [ds for ds in datasets if needs_attention(ds)]
        healthy = [ds for ds in datasets if not needs_attention(ds)]
        table = (f"<h2>Needs attention ({len(urgent)})</h2>"
                 + (_dataset_table([_dataset_row(ds, now, links, timeline=True, slots=COMPACT_TIMELINE_ROWS)
                                    for ds in urgent], True)
                    if urgent else '<p class="muted">Nothing: every dataset is idle and its last refresh did not '
                                   "fail.</p>")
                 + f'<details class="healthy"><summary>Healthy ({len(healthy)}): idle, last refresh did not fail'
                   "</summary>"
                 + _dataset_table([_dataset_row(ds, now, links, timeline=False) for ds in healthy], False,
                                  "datasets compact")
                 + "</details>")
    body = (f"<header><h1>Power BI refresh status</h1><p class=\"meta\">{len(datasets)} dataset(s) · generated "
            f"{esc(now.strftime('%Y-%m-%d %H:%M:%S UTC'))} · reloads every minute</p></header>"
            f"{_counts(datasets) if datasets else ''}{alerts_box(alerts or [], now)}{_legend()}{table}"
            "<footer>Hover a bar for its details and Power BI's message. Times are UTC. "
            "JSON: <code>/api/datasets</code>, <code>/api/datasets/{key}/history</code>.</footer>")
    return _page("Power BI refresh status", body)


def render_dataset(key: str, summary: dict[str, Any] | None, rows: list[dict[str, Any]], now: datetime,
                   links: str = "", alerts: list[dict[str, Any]] | None = None) -> str:
    """One dataset's page: its facts, a timeline and a table of its latest outcome rows."""
    facts = []
    if summary is not None:
        sources = "".join(
            f"<div><code>{esc(s['table'])}</code>"
            f"{' → ' + esc(_list(s['model_tables'])) if s.get('model_tables') else ' → whole model'}</div>"
            for s in summary.get("sources", []))
        facts += [("Freshness", _freshness_cell(summary, now)),
                  ("Workspace / dataset", f"{esc(summary.get('workspace'))} / {esc(summary.get('dataset'))}"),
                  ("Sources", sources),
                  ("Schedule", _schedule_cell(summary, now)),
                  ("Refreshes in 24 h", _limit_cell(summary)),
                  ("Pending / running", _activity_cell(summary, now)),
                  ("Last success", fmt_when(summary.get("last_success_at"), now))]
    else:
        facts.append(("Configured", "no (refreshed on request by workspace and dataset)"))
    fact_html = "".join(f"<dt>{esc(name)}</dt><dd>{value}</dd>" for name, value in facts)
    history = []
    for row in rows:
        message = row.get("error_message") or row.get("detail")
        row_sources = row.get("sources") or {}
        source_text = _list(f"{t} v{s.get('first_version')}-{s.get('last_version')}" if isinstance(s, dict) else t
                            for t, s in row_sources.items()) if isinstance(row_sources, dict) else ""
        history.append(
            f'<tr class="outcome" data-status="{esc(row.get("status"))}">'
            f"<td>{fmt_when(row.get('queued_at'), now)}</td><td>{badge(row.get('status'))}</td>"
            f"<td>{esc(_list(row.get('triggers')) or row.get('trigger'))}</td>"
            f"<td class=\"wrap\">{esc(_list(row.get('requested_by')))}</td>"
            f"<td class=\"wrap\">{esc(_list(row.get('reasons')))}</td>"
            f"<td>{fmt_when(row.get('started_at'), now)}</td>"
            f"<td>{esc(fmt_duration(row.get('duration_seconds')))}</td>"
            f"<td class=\"wrap\">{esc(_list(row.get('model_tables')) or 'whole model')}</td>"
            f"<td class=\"wrap\">{esc(source_text)}</td>"
            f"<td class=\"wrap error\">{esc(_short(message, 600))}</td>"
            f"<td><code title=\"{esc(row.get('job_id'))}\">{esc(str(row.get('job_id') or '')[:8])}</code></td></tr>")
    table = ("<table class=\"history\"><thead><tr><th>Queued</th><th>Status</th><th>Trigger</th><th>Requested by</th>"
             "<th>Reason</th><th>Started</th><th>Duration</th><th>Model tables</th><th>Sources</th>"
             f"<th>Detail / error</th><th>Job</th></tr></thead><tbody>{''.join(history)}</tbody></table>"
             if history else '<p class="muted">No refreshes recorded yet.</p>')
    body = (f"<header><p class=\"small\"><a href=\"{esc(_href(links))}\">← all datasets</a></p>"
            f"<h1>Dataset {esc(key)}</h1><p class=\"meta\">generated {esc(now.strftime('%Y-%m-%d %H:%M:%S UTC'))}"
            "</p></header>"
            f"<dl class=\"facts\">{fact_html}</dl>{alerts_box(alerts or [], now)}"
            f"<h2>Last {len(rows)} refreshes</h2>{_legend()}"
            f"{timeline_svg(rows, now, label=f'last refreshes of {key}', width=960, height=110, slots=HISTORY_ROWS)}"
            f"<h2>History</h2>{table}")
    return _page(f"Dataset {key} · Power BI refresh status", body)


def render_error(status: int, message: str) -> str:
    """A small error page (the message is escaped)."""
    body = (f"<h1>{esc(status)}</h1><p>{esc(message)}</p>"
            "<p class=\"small\"><a href=\"?\">← all datasets</a></p>")
    return _page(f"{status} · Power BI refresh status", body, auto_refresh=False)
