"""Typed application settings, read once from the environment (app settings in Azure,
``local.settings.json`` ``Values`` locally).

Every setting the code reads is declared in :data:`SETTINGS` with its default and meaning; the
README's configuration reference and the infrastructure parity test are checked against it.
Loading fails fast with a :class:`SettingsError` that names the offending setting. Nothing here
runs at import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from refresh.core.adhoc import AdhocAccess, parse_setting
from refresh.core.validation import unicode_problem

APP_ROOT = Path(__file__).resolve().parents[2]

# Connection setting *prefixes*. Either the plain name holds a connection string, or
# ``<NAME>__serviceUri`` / ``__blobServiceUri`` / ``__queueServiceUri`` / ``__tableServiceUri`` /
# ``__accountName`` plus optional ``__credential`` and ``__clientId`` describe an identity-based
# connection, exactly as the Functions host reads them (see refresh/core/connections.py).
HOST_STORAGE = "AzureWebJobsStorage"
LAKE_STORAGE = "LAKE_STORAGE"


class SettingsError(ValueError):
    """A setting is missing or has a value the app cannot use. The message names the setting."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"setting {name}: {problem}")
        self.setting = name
        self.problem = problem


@dataclass(frozen=True)
class Setting:
    """One app setting: its name, default (None = no default), and what it means."""

    name: str
    default: str | None
    description: str


SETTINGS: tuple[Setting, ...] = (
    Setting("REFRESH_CONFIG", "refresh-config.json",
            "Path of the routing config (JSON), relative to the app root unless absolute."),
    Setting("GOLD_CONTAINER", "gold", "Container (file system) of the lake that holds the gold Delta tables."),
    Setting("REFRESH_QUEUE", "refresh-jobs", "Storage queue (in AzureWebJobsStorage) for refresh jobs."),
    Setting("STATE_TABLE", "RefreshState",
            "Table (in AzureWebJobsStorage) for watermarks, pending jobs, leases and schedule marks."),
    Setting("OUTCOMES_TABLE", "RefreshOutcomes", "Table (in AzureWebJobsStorage) with one row per refresh job."),
    Setting("SWEEP_SCHEDULE", "0 */5 * * * *",
            "NCRONTAB schedule of the sweep_delta_logs safety-net timer (read by the host binding)."),
    Setting("POWERBI_API_URL", "https://api.powerbi.com/v1.0/myorg",
            "Power BI REST API base URL (change for sovereign clouds)."),
    Setting("POWERBI_SCOPE", "https://analysis.windows.net/powerbi/api/.default",
            "OAuth scope asked of azure-identity for Power BI tokens."),
    Setting("POWERBI_TIMEOUT_SECONDS", "30", "Timeout of each Power BI HTTP call (connect and read)."),
    Setting("STORAGE_TIMEOUT_SECONDS", "30", "Timeout of each Azure Storage call (connect and read)."),
    Setting("MAX_RETRY_AFTER_SECONDS", "3600",
            "Cap on how long a job waits when Power BI answers 429 with Retry-After."),
    Setting("SWEEP_CONCURRENCY", "16", "How many tables the sweep probes at once."),
    Setting("SCHEDULE_MISSED_GRACE_SECONDS", "300",
            "A scheduled refresh whose due time passed longer ago than this (the timer did not run) is "
            "skipped and recorded as missed instead of being fired late."),
    Setting("ADHOC_REFRESH_WORKSPACES", "",
            "Workspaces whose unconfigured datasets may be refreshed through POST /api/refreshes with "
            "\"workspace\": * for every workspace, or a comma-separated list of workspace names or ids "
            "(case-insensitive, as callers write them). Empty: none (the routing config's adhoc_workspaces "
            "may still allow some)."),
)


# Alert delivery (read by refresh/monitoring/alerts.py: AlertSettings.load, which never fails the app)
ALERT_SETTINGS: tuple[Setting, ...] = (
    Setting("ALERT_WEBHOOK_URL", "",
            "Webhook that receives alert events (POST, JSON). Empty: alerts are recorded but not sent. "
            "A secret: use a Key Vault reference in Azure. https only (plain http on loopback)."),
    Setting("ALERT_WEBHOOK_FORMAT", "json",
            "Body of each alert: json (the event's facts) or teams (an Adaptive Card message for a "
            "Microsoft Teams Workflows webhook)."),
    Setting("ALERT_WEBHOOK_TIMEOUT_SECONDS", "10", "Timeout of each webhook POST (connect and read)."),
    Setting("ALERT_STATUS_BASE_URL", "",
            "Base URL for the status links in alerts. Empty: https://<WEBSITE_HOSTNAME> (set by Azure)."),
)
SETTINGS = SETTINGS + ALERT_SETTINGS

_DEFAULTS = {s.name: s.default for s in SETTINGS}

_QUEUE_RE = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
_TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Settings:
    """The app's settings, validated."""

    refresh_config: Path
    gold_container: str
    refresh_queue: str
    state_table: str
    outcomes_table: str
    powerbi_api_url: str
    powerbi_scope: str
    powerbi_timeout: float
    storage_timeout: float
    max_retry_after: int
    sweep_concurrency: int
    schedule_missed_grace: int = 300
    adhoc: AdhocAccess = field(default_factory=AdhocAccess)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, app_root: Path = APP_ROOT) -> Settings:
        """Read and validate every setting from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env

        def raw(name: str) -> str:
            value = env.get(name)
            problem = unicode_problem(value) if value is not None else None
            if problem:  # e.g. bytes that are not UTF-8 in the environment (os.environ's surrogateescape)
                raise SettingsError(name, problem)
            if value is None or value.strip() == "":
                default = _DEFAULTS[name]
                if default is None:
                    raise SettingsError(name, "is required and not set")
                return default
            return value.strip()

        def checked(name: str, pattern: re.Pattern[str], what: str) -> str:
            value = raw(name)
            if not pattern.match(value):
                raise SettingsError(name, f"{value!r} is not a valid {what}")
            return value

        config = Path(raw("REFRESH_CONFIG"))
        if not config.is_absolute():
            config = app_root / config

        return cls(
            refresh_config=config,
            gold_container=checked("GOLD_CONTAINER", _CONTAINER_RE, "container name (3-63 lowercase letters, "
                                   "digits and single hyphens)"),
            refresh_queue=checked("REFRESH_QUEUE", _QUEUE_RE, "queue name (3-63 lowercase letters, digits and "
                                  "single hyphens)"),
            state_table=checked("STATE_TABLE", _TABLE_RE, "table name (3-63 letters and digits, starting with "
                                "a letter)"),
            outcomes_table=checked("OUTCOMES_TABLE", _TABLE_RE, "table name (3-63 letters and digits, "
                                   "starting with a letter)"),
            powerbi_api_url=_url(raw("POWERBI_API_URL"), "POWERBI_API_URL"),
            powerbi_scope=raw("POWERBI_SCOPE"),
            powerbi_timeout=_number(raw, "POWERBI_TIMEOUT_SECONDS", float, 1, 600),
            storage_timeout=_number(raw, "STORAGE_TIMEOUT_SECONDS", float, 1, 600),
            max_retry_after=_number(raw, "MAX_RETRY_AFTER_SECONDS", int, 1, 7 * 24 * 3600 - 60),
            sweep_concurrency=_number(raw, "SWEEP_CONCURRENCY", int, 1, 256),
            schedule_missed_grace=_number(raw, "SCHEDULE_MISSED_GRACE_SECONDS", int, 60, 7 * 24 * 3600),
            adhoc=_adhoc(raw("ADHOC_REFRESH_WORKSPACES")),
        )


def _number(raw: Callable[[str], str], name: str, kind: type[Any], low: float, high: float) -> Any:
    return number_setting(name, raw(name), kind, low, high)


def number_setting(name: str, text: str, kind: type[Any], low: float, high: float) -> Any:
    """The setting ``name``'s value ``text`` as ``kind`` (int or float) within ``low..high``; raises
    :class:`SettingsError` naming the setting."""
    try:
        value = kind(text)
    except ValueError:
        raise SettingsError(name, f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
    if not low <= value <= high:
        raise SettingsError(name, f"{value} is outside {low}..{high}")
    return value


def _adhoc(text: str) -> AdhocAccess:
    access, problem = parse_setting(text)
    if problem:
        raise SettingsError("ADHOC_REFRESH_WORKSPACES", problem)
    return access


def _url(value: str, name: str) -> str:
    return url_setting(name, value).rstrip("/")


def url_setting(name: str, value: str, *, secret: bool = False) -> str:
    """The setting ``name``'s value checked as a URL: https, or plain http on loopback, with a host; raises
    :class:`SettingsError` naming the setting (and, when ``secret``, never showing the value)."""
    shown = "the value" if secret else repr(value)
    parts = urlsplit(value)
    loopback = parts.hostname in {"127.0.0.1", "localhost", "::1"}
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise SettingsError(name, f"{shown} must be an https URL (plain http only on loopback)")
    if not parts.hostname:
        raise SettingsError(name, f"{shown} has no host")
    return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded on first use (never at import time)."""
    return Settings.from_env()


def reset_settings() -> None:
    """Forget the cached settings (tests and the local runtime change the environment)."""
    get_settings.cache_clear()
