"""The HTTP API: one handler per endpoint, each taking a ``func.HttpRequest`` and returning a response.

Every route is registered for every method so that a wrong method gets *our* JSON 405 (with
``Allow``). Input is validated before it is used anywhere: dataset keys against
:data:`refresh.core.validation.DATASET_KEY_RE`, job ids as 32 lowercase hex digits, body fields one by one
(each problem reported under its field name). Nothing from a request reaches an OData filter or a
Table Storage query (lookups are by validated key; ad-hoc names only reach Power BI through the
client, which quotes OData literals), and nothing from a request is logged before it is validated
(request bodies never). See the README, "HTTP API, schedules and the status page".
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any

import azure.functions as func

from refresh.core import adhoc
from refresh.core import storage as tables
from refresh.core.clock import iso, parse_iso
from refresh.core.context import get_app
from refresh.core.routing import ConfigError
from refresh.core.settings import SettingsError
from refresh.core.validation import (
    DATASET_KEY_RE,
    JOB_ID_RE,
    MAX_NAME_LENGTH,
    REFRESH_TYPES,
    REPLACEMENT,
    SURROGATE_RE,
    json_type,
    readable,
    shown,
    text_problem,
)
from refresh.jobs import summaries
from refresh.jobs.outcomes import Status
from refresh.jobs.pending import PK_DATASET, Change, readable_pending
from refresh.jobs.worker import SHARED_DAILY_LIMIT
from refresh.monitoring.freshness import FreshnessRecord, freshness_of
from refresh.surfaces.http_input import (  # noqa: F401  (MAX_BODY_BYTES, adhoc_key: part of this module's interface)
    MAX_BODY_BYTES,
    ApiError,
    adhoc_key,
    check_request_text,
    dataset_key,
    field_name,
    platform_auth_enabled,
    read_json_object,
    requester,
    status_url,
)

log = logging.getLogger(__name__)

DEFAULT_TOP = 20
BACKFILL_PER_VIEW = 3
"""Datasets without a summary whose summary a view builds from their outcome rows (one query each)."""
MAX_TOP = 100
MAX_MODEL_TABLES = 100
MAX_MODEL_TABLE_LENGTH = 128
MAX_REASON_LENGTH = 500
HEALTH_TIMEOUT_SECONDS = 10.0
REQUEST_FIELDS = ("dataset", "workspace", "model_tables", "type", "reason")
JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


# --------------------------------------------------------------------------------------------------
# responses


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    """A JSON response (UTF-8, never cached). Stored text that is not valid Unicode (rows written
    before it was refused) is shown with replacement characters rather than failing the answer."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
    body = SURROGATE_RE.sub(REPLACEMENT, body)  # same as readable(data) on every string and key, in one pass
    return func.HttpResponse(body=body, status_code=status, headers={**JSON_HEADERS, **(headers or {})},
                             mimetype="application/json", charset="utf-8")


def _error_body(exc: ApiError) -> dict[str, Any]:
    out: dict[str, Any] = {"error": exc.code, "message": exc.message}
    if exc.fields:
        out["fields"] = exc.fields
    return out


def _html_error(exc: ApiError) -> func.HttpResponse:
    from refresh.surfaces import status_page

    return status_page.html_response(status_page.render_error(exc.status, exc.message), exc.status,
                                     exc.headers)


def endpoint(*methods: str, html: bool = False) -> Callable[[Callable[..., func.HttpResponse]],
                                                            Callable[[func.HttpRequest], func.HttpResponse]]:
    """Wrap a handler: 405 for other methods, :class:`ApiError` as its answer, config or settings
    problems as 503, anything unexpected as a logged 500 (no details to the caller)."""
    def wrap(handler: Callable[..., func.HttpResponse]) -> Callable[[func.HttpRequest], func.HttpResponse]:
        @wraps(handler)
        def run(req: func.HttpRequest) -> func.HttpResponse:
            try:
                if (req.method or "").upper() not in methods:
                    raise ApiError(405, "method_not_allowed", f"use {' or '.join(methods)} on this URL",
                                   headers={"Allow": ", ".join(methods)})
                check_request_text(req)
                return handler(req)
            except ApiError as exc:
                if html:
                    return _html_error(exc)
                return json_response(_error_body(exc), exc.status, exc.headers)
            except (ConfigError, SettingsError) as exc:
                log.error("%s: the app is misconfigured: %s", handler.__name__, exc)
                error = ApiError(503, "misconfigured", f"the app is misconfigured: {exc}")
            except Exception:
                log.exception("%s failed", handler.__name__)
                error = ApiError(500, "internal_error", "the request could not be handled; see the app's logs")
            return _html_error(error) if html else json_response(_error_body(error), error.status)
        return run
    return wrap


# --------------------------------------------------------------------------------------------------
# request parsing


def _top(req: func.HttpRequest) -> tuple[int, bool]:
    """``?top=N``: 1 or more (default :data:`DEFAULT_TOP`), capped at :data:`MAX_TOP`; (top, capped)."""
    raw = req.params.get("top")
    if raw is None or raw == "":
        return DEFAULT_TOP, False
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or int(raw) < 1:
        raise ApiError(400, "invalid_request", "top must be a whole number of at least 1",
                       {"top": f"must be a whole number from 1 (at most {MAX_TOP} are returned)"})
    top = int(raw)
    return min(top, MAX_TOP), top > MAX_TOP


# --------------------------------------------------------------------------------------------------
# POST /api/refreshes


@endpoint("POST")
def request_refresh(req: func.HttpRequest) -> func.HttpResponse:
    """Ask for a refresh now: of a configured dataset (``{"dataset": key}``) or of any dataset by
    workspace and dataset name or id. Joins the dataset's pending job if there is one. 202."""
    data = read_json_object(req)
    problems: dict[str, str] = {}
    for name in getattr(data, "duplicates", ()):
        problems[field_name(name)] = "is given more than once"
    for name in data:
        if name not in REQUEST_FIELDS:
            problems[field_name(name)] = f"unknown field (known fields: {', '.join(REQUEST_FIELDS)})"
    dataset, workspace = data.get("dataset"), data.get("workspace")
    by_names = workspace is not None
    if dataset is None:
        problems["dataset"] = "is required: a configured dataset key, or a dataset name or id with \"workspace\""
    elif not by_names:
        if not isinstance(dataset, str):
            problems["dataset"] = f"must be a string, got {json_type(dataset)}"
        elif not DATASET_KEY_RE.fullmatch(dataset):
            problems["dataset"] = ("is not a configured dataset key (1-64 letters, digits, '_' or '-'); to refresh "
                                   "a dataset that is not configured, give \"workspace\" too")
    else:
        for name, value in (("workspace", workspace), ("dataset", dataset)):
            problem = text_problem(value, MAX_NAME_LENGTH)
            if problem:
                problems[name] = problem
    model_tables = _model_tables(data.get("model_tables"), problems)
    refresh_type = data.get("type")
    if refresh_type is not None and refresh_type not in REFRESH_TYPES:
        hint = ""
        if isinstance(refresh_type, str):
            close = [t for t in REFRESH_TYPES if t.lower() == refresh_type.lower()]
            hint = f" (did you mean {close[0]!r}? values are case-sensitive)" if close else ""
        problems["type"] = f"must be one of {', '.join(REFRESH_TYPES)}{hint}"
    reason = data.get("reason")
    if reason is not None:
        if not isinstance(reason, str):
            problems["reason"] = f"must be a string, got {json_type(reason)}"
        else:
            problem = text_problem(reason, MAX_REASON_LENGTH, required=False, strip=False)
            if problem:
                problems["reason"] = problem
            else:
                reason = reason.strip() or None
    if problems:
        raise ApiError(400, "invalid_request", f"{len(problems)} field(s) of the request are invalid", problems)

    app = get_app()
    config = app.config
    if by_names:
        assert isinstance(workspace, str) and isinstance(dataset, str)  # checked above: both texts
        key = next((k for k, ds in config.datasets.items()
                    if ds.workspace.lower() == workspace.lower() and ds.dataset.lower() == dataset.lower()),
                   None) or adhoc_key(workspace, dataset)
        if key not in config.datasets:
            _check_adhoc_allowed(app, workspace, dataset)
    else:
        key = str(dataset)
        if key not in config.datasets:
            raise ApiError(404, "unknown_dataset", f"no dataset with key {key!r} is configured; give \"workspace\" "
                                                   "and the dataset's name or id to refresh one that is not")
    configured = key in config.datasets
    change = Change(trigger="manual", debounce_seconds=0, max_delay_seconds=0,
                    model_tables=frozenset(model_tables) if model_tables else None,
                    requested_by=requester(req, platform_auth_enabled(app.env)),
                    reason=reason, refresh_type=refresh_type,
                    workspace=None if configured else workspace, dataset=None if configured else dataset)
    result = app.states.record(key, change)
    joined = not result.created
    log.info("manual refresh: dataset=%s job=%s joined=%s", key, result.job_id, joined)
    url = status_url(req, result.job_id or "")
    return json_response({
        "job_id": result.job_id, "dataset": key, "configured": configured,
        "joined": "running" if result.joined == "running" else joined, "due_at": result.due_at, "status_url": url,
        "message": ("joined the refresh already running for this dataset (nothing changed since it started)"
                    if result.joined == "running" else "joined the refresh already pending for this dataset"
                    if joined else "refresh queued"),
    }, 202, {"Location": url})


def _check_adhoc_allowed(app: Any, workspace: str, dataset: str) -> None:
    """403 unless ad-hoc refreshes are allowed in ``workspace`` (refresh/jobs/adhoc.py); the answer names only
    what the caller asked for and says how to allow it."""
    if (app.settings.adhoc | app.config.adhoc).allows(workspace):
        return
    log.warning("manual refresh refused: ad-hoc refreshes are not allowed in the workspace asked for")
    raise ApiError(403, "adhoc_not_allowed",
                   f"dataset {shown(dataset)!r} in workspace {shown(workspace)!r} is not configured, and refreshing "
                   f"datasets that are not configured is not allowed in that workspace. To allow it, add the "
                   f"workspace (or *) to the app setting {adhoc.SETTING} (a comma-separated list of workspace "
                   f"names or ids) or to \"{adhoc.CONFIG_KEY}\" in the routing config; or configure the dataset "
                   f"and refresh it by its key")


def _model_tables(value: Any, problems: dict[str, str]) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        problems["model_tables"] = f"must be an array of model table names, got {json_type(value)}"
        return None
    if not 1 <= len(value) <= MAX_MODEL_TABLES:
        problems["model_tables"] = (f"must list 1 to {MAX_MODEL_TABLES} model tables (leave it out to refresh the "
                                    f"whole model), got {len(value)}")
        return None
    seen: dict[str, int] = {}
    names: list[str] = []
    for i, name in enumerate(value):
        problem = text_problem(name, MAX_MODEL_TABLE_LENGTH)
        if problem is None and name.lower() in seen:
            problem = f"repeats model_tables[{seen[name.lower()]}] (names are case-insensitive)"
        if problem:
            problems[f"model_tables[{i}]"] = problem
        else:
            seen[name.lower()] = i
            names.append(name)
    return names


# --------------------------------------------------------------------------------------------------
# GET /api/refreshes/{job_id}


@endpoint("GET")
def get_refresh(req: func.HttpRequest) -> func.HttpResponse:
    """The job's outcome row; 404 for an unknown job id."""
    job_id = req.route_params.get("job_id") or ""
    if not JOB_ID_RE.fullmatch(job_id):
        raise ApiError(400, "invalid_request", "not a job id", {"job_id": "must be 32 lowercase hexadecimal digits"})
    row = get_app().outcomes.get(job_id)
    if row is None:
        raise ApiError(404, "unknown_job", f"no refresh job with id {job_id}")
    return json_response(row)


# --------------------------------------------------------------------------------------------------
# GET /api/datasets and /api/datasets/{key}/history


@endpoint("GET")
def list_datasets(req: func.HttpRequest) -> func.HttpResponse:
    """Every configured dataset: sources, schedule, last outcome, pending and running jobs, daily limit use,
    durations and freshness. One query whatever the number of datasets (see :func:`collect_datasets`)."""
    app = get_app()
    return json_response({"generated_at": iso(app.clock.now()),
                          "datasets": collect_datasets(app, include_recent=False)})


@endpoint("GET")
def dataset_history(req: func.HttpRequest) -> func.HttpResponse:
    """A dataset's outcome rows, newest first (``?top=N``, default 20, capped at 100)."""
    key = dataset_key(req.route_params.get("key"))
    top, capped = _top(req)
    app = get_app()
    rows = app.outcomes.history(key, top)
    if key not in app.config.datasets and not rows:
        raise ApiError(404, "unknown_dataset", f"no dataset with key {key!r} is configured or has refreshes")
    return json_response({"dataset": key, "top": top, "capped": capped, "outcomes": rows})


def collect_datasets(app: Any, include_recent: bool = True) -> list[dict[str, Any]]:
    """What the status page and ``GET /api/datasets`` show of every configured dataset.

    One query on the state table, whatever the number of datasets: the dataset states (pending, running,
    starts, freshness, and the summary the worker keeps there, refresh/jobs/summaries.py: last outcomes,
    durations). No outcome rows are read and Power BI is never called, except for datasets that have
    no summary yet (recorded before summaries existed, or newly configured): up to :data:`BACKFILL_PER_VIEW` of
    them per view get one built from their outcome rows and stored, the others say ``"summarized": false``.
    """
    now = app.clock.now()
    config = app.config
    states = {tables.from_row_key(e["RowKey"]): e
              for e in app.state_table.query_entities("PartitionKey eq @pk", parameters={"pk": PK_DATASET})}
    kept = {key: summaries.DatasetSummary.from_entity(e) for key, e in states.items() if summaries.has_summary(e)}
    for key in [k for k in config.datasets if k not in kept][:BACKFILL_PER_VIEW]:
        kept[key] = summaries.backfill(app.states, key, app.outcomes.history(key, summaries.RECENT))
    return [dataset_summary(ds, states.get(key), kept.get(key) or summaries.DatasetSummary(), now, include_recent,
                            summarized=key in kept)
            for key, ds in config.datasets.items()]


def summary_from_rows(rows: list[dict[str, Any]]) -> summaries.DatasetSummary:
    """A summary built from outcome rows already read (a dataset's own page), plus rows not yet ended."""
    summary = summaries.DatasetSummary()
    for row in rows:
        summary.fold(row)
    return summary


def dataset_summary(ds: Any, state: Any | None, summary: summaries.DatasetSummary, now: datetime,
                    include_recent: bool = True, summarized: bool = True) -> dict[str, Any]:
    """One dataset's summary (see :func:`collect_datasets`)."""
    from refresh.jobs.schedules import next_due

    pending = readable_pending(state)
    running = tables.get_json(state, "running")
    day_ago = now - timedelta(hours=24)
    starts = [s for s in tables.get_json(state, "starts", []) or [] if parse_iso(s) > day_ago]
    limit, capacity = daily_limit(ds, running, summary.recent)
    limit_text = (f"{len(starts)} / {SHARED_DAILY_LIMIT} if shared (capacity not known yet)" if capacity == "unknown"
                  else f"{len(starts)} / {'unlimited' if limit is None else limit} ({capacity})")
    due = next_due(ds.schedule, now)
    slo_minutes = getattr(ds, "freshness_slo_minutes", None)
    freshness = freshness_of(FreshnessRecord.from_entity(state), slo_minutes * 60 if slo_minutes else None, now)
    out: dict[str, Any] = {
        "key": ds.key, "workspace": ds.workspace, "dataset": ds.dataset,
        "sources": [{"table": s.table, "model_tables": list(s.model_tables) if s.model_tables else None}
                    for s in ds.sources],
        "schedule": None if not ds.schedule else {
            "expression": ds.schedule, "skip_if_unchanged": ds.schedule_skip_if_unchanged,
            "next_due_at": iso(due) if due else None},
        "last_outcome": summary.last,
        "last_success_at": tables.value(state, "last_success_at") or (summary.last_success or {}).get("ended_at"),
        "pending": None if pending is None else {
            "job_id": pending.job_id, "trigger": pending.trigger, "triggers": pending.triggers,
            "created_at": pending.created_at, "due_at": pending.due_at, "model_tables": pending.objects(),
            "sources": {t: {"first_version": c.first_version, "last_version": c.last_version, "commits": c.commits}
                        for t, c in pending.sources.items()},
            "requested_by": pending.requested_by, "reasons": pending.reasons},
        "running": None if not running else {
            "job_id": running.get("job_id"), "claimed_at": running.get("claimed_at"),
            "started_at": running.get("started_at"), "refresh_id": running.get("refresh_id"),
            "timeout_at": running.get("timeout_at"), "triggers": (running.get("job") or {}).get("triggers", [])},
        "daily_limit": {"used": len(starts), "limit": limit, "capacity": capacity, "window": "rolling 24 h",
                        "text": limit_text},
        "durations": _durations(summary.recent),
        "freshness": freshness.to_json(),
        "summarized": summarized,
    }
    if include_recent:
        out["recent"] = summary.recent
    return out


def _durations(recent: list[dict[str, Any]]) -> dict[str, Any]:
    """Durations (s, as the app saw them) of the recent completed refreshes: the latest and the median."""
    values = [float(e["duration_seconds"]) for e in recent
              if e.get("status") == Status.COMPLETED and isinstance(e.get("duration_seconds"), int | float)]
    return {"last_completed_seconds": values[0] if values else None,
            "median_completed_seconds": statistics.median(values) if values else None,
            "completed_counted": len(values)}


def daily_limit(ds: Any, running: dict[str, Any] | None, rows: list[dict[str, Any]]) -> tuple[int | None, str]:
    """``(limit or None for unlimited, where it comes from)`` without asking Power BI: the config, else
    the capacity seen by the latest refresh (enhanced refreshes run on dedicated capacity)."""
    if ds.daily_limit is not None:
        return ds.daily_limit, "configured"
    if ds.dedicated_capacity is not None:
        return (None, "dedicated") if ds.dedicated_capacity else (SHARED_DAILY_LIMIT, "shared")
    enhanced = running.get("enhanced") if running else None
    if enhanced is None:
        kind = next((r.get("refresh_type") for r in rows if r.get("refresh_type") in ("enhanced", "standard")), None)
        enhanced = None if kind is None else kind == "enhanced"
    if enhanced is None:
        return SHARED_DAILY_LIMIT, "unknown"
    return (None, "dedicated") if enhanced else (SHARED_DAILY_LIMIT, "shared")


# --------------------------------------------------------------------------------------------------
# GET /api/health


@endpoint("GET")
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Config valid, storage reachable, Power BI token obtainable, gold container readable (a lake without a
    hierarchical namespace is a warning): 200, or 503 naming what failed."""
    from refresh.core import lake_check

    try:
        app = get_app()
    except (SettingsError, ConfigError) as exc:
        return json_response({"status": "unhealthy", "checks": {"settings": {"ok": False, "error": str(exc)}}}, 503)
    probes: dict[str, Callable[[], dict[str, Any]]] = {
        "config": lambda: _check_config(app), "storage": lambda: _check_storage(app),
        "powerbi": lambda: _check_token(app), "lake": lambda: lake_check.check_lake(app.settings, app.env).to_dict()}
    pool = ThreadPoolExecutor(max_workers=len(probes), thread_name_prefix="health")
    try:
        futures = {name: pool.submit(probe) for name, probe in probes.items()}
        wait(futures.values(), timeout=HEALTH_TIMEOUT_SECONDS)
        checks: dict[str, dict[str, Any]] = {}
        for name, future in futures.items():
            if not future.done():
                checks[name] = {"ok": False, "error": f"no answer within {HEALTH_TIMEOUT_SECONDS:.0f} s"}
            elif (error := future.exception()) is not None:
                checks[name] = {"ok": False, "error": _short_error(error)}
            else:
                checks[name] = future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    ok = all(check["ok"] for check in checks.values())
    if not ok:
        log.warning("health: failing checks: %s", ", ".join(n for n, c in checks.items() if not c["ok"]))
    return json_response({"status": "healthy" if ok else "unhealthy", "checks": checks}, 200 if ok else 503)


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = re.sub(r"(?i)(sig|accountkey|access_token|code)=[^&;\s]+", r"\1=<redacted>", text)
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_config(app: Any) -> dict[str, Any]:
    try:
        config = app.config
    except ConfigError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "datasets": len(config.datasets),
            "scheduled": sum(1 for ds in config.datasets.values() if ds.schedule)}


def _check_storage(app: Any) -> dict[str, Any]:
    """One cheap call on the state table and one on the queue, without the SDK's retries."""
    from azure.core.exceptions import ResourceNotFoundError

    from refresh.core import connections
    from refresh.core.settings import HOST_STORAGE

    timeout = min(5.0, app.settings.storage_timeout)
    notes = []
    table = connections.table_service(HOST_STORAGE, timeout, app.env, retry_total=0)
    try:
        table.get_table_client(app.settings.state_table).get_entity("health", "probe")
    except ResourceNotFoundError:
        pass  # reached the service; the probe entity (or the table, before first use) does not exist
    queue = connections.queue_service(HOST_STORAGE, timeout, app.env, retry_total=0)
    try:
        queue.get_queue_client(app.settings.refresh_queue).get_queue_properties()
    except ResourceNotFoundError:
        notes.append(f"queue {app.settings.refresh_queue} does not exist yet (created on first use)")
    out: dict[str, Any] = {"ok": True, "table": app.settings.state_table, "queue": app.settings.refresh_queue}
    if notes:
        out["notes"] = notes
    return out


def _check_token(app: Any) -> dict[str, Any]:
    token = app.credential.get_token(app.settings.powerbi_scope)
    if not getattr(token, "token", None):
        return {"ok": False, "error": "the credential returned an empty token"}
    expires = getattr(token, "expires_on", None)
    out: dict[str, Any] = {"ok": True, "scope": app.settings.powerbi_scope}
    if isinstance(expires, int | float):
        out["expires_at"] = iso(datetime.fromtimestamp(expires, tz=UTC))
    return out


# --------------------------------------------------------------------------------------------------
# GET /api/status


@endpoint("GET", html=True)
def status_page(req: func.HttpRequest) -> func.HttpResponse:
    """The HTML status page; ``?dataset=<key>`` shows one dataset's history. The overview costs two queries
    (dataset states with their summaries, alert delivery problems), a dataset's page three reads (its state, its
    outcome rows, alert problems)."""
    from refresh.surfaces import status_page as page

    app = get_app()
    now = app.clock.now()
    links = page.link_params(req.params.get("code"))
    raw = req.params.get("dataset")
    if raw is None or raw == "":
        # text that is not valid Unicode is replaced once, in the finished page (html_response)
        return page.html_response(page.render_overview(collect_datasets(app), now, links, alerts=alert_problems(app)))
    key = dataset_key(raw, "dataset")
    rows = app.outcomes.history(key, page.HISTORY_ROWS)
    ds = app.config.datasets.get(key)
    if ds is None and not rows:
        raise ApiError(404, "unknown_dataset", f"no dataset with key {key!r} is configured or has refreshes")
    summary = None
    if ds is not None:
        summary = dataset_summary(ds, app.states.get(key), summary_from_rows(rows), now)
    return page.html_response(page.render_dataset(key, readable(summary), readable(rows), now, links,
                                                  alerts=readable(alert_problems(app, key))))


ALERT_PROBLEMS_SHOWN = 10


def alert_problems(app: Any, dataset: str | None = None) -> list[dict[str, Any]]:
    """Alert deliveries that failed or are being retried, newest first, of every dataset or of ``dataset`` (one
    query on the app's alert store, ``app.alerter.store``). A failure to read them never takes the page down: it
    is logged and shown as no problems."""
    from refresh.monitoring.alerts import AlertStore

    store: AlertStore = app.alerter.store
    try:
        return store.problems(ALERT_PROBLEMS_SHOWN, dataset)
    except Exception:
        log.exception("status page: could not read alert delivery problems")
        return []
