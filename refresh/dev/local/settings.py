"""App settings and host configuration for the local runtime, read the way the Functions host reads them.

App settings
    ``local.settings.json`` ``Values`` are loaded into the environment *unless the environment
    already has a non-empty value* (Core Tools: "Skipping 'X' from local settings as it's already
    defined in current environment variables"). Settings the app declares in
    :data:`refresh.core.settings.SETTINGS` and that neither source sets get their declared default, so
    binding expressions such as ``%REFRESH_QUEUE%`` and the app's own reading of the setting agree.

Binding expressions
    ``%NAME%`` in a binding property is replaced by the app setting ``NAME``. An unknown setting is
    an error naming the setting and the function (the host: "'%X%' does not resolve to a value").

host.json
    ``extensions.queues`` (batchSize, newBatchThreshold, maxPollingInterval, visibilityTimeout,
    maxDequeueCount, messageEncoding), ``extensions.blobs.maxDegreeOfParallelism``,
    ``extensions.http.routePrefix`` and ``functionTimeout``, with the host's defaults.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refresh.core.settings import SETTINGS

SOURCE_ENVIRONMENT = "environment"
SOURCE_FILE = "local.settings.json"
SOURCE_DEFAULT = "default"

_EXPRESSION = re.compile(r"%([^%]*)%")
_TIMESPAN = re.compile(r"^(?:(?P<days>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2}):(?P<s>\d{1,2}(?:\.\d+)?)$")


class LocalSettingsError(ValueError):
    """``local.settings.json``, ``host.json`` or a binding expression cannot be used."""


@dataclass
class AppSettings:
    """The resolved app settings and where each came from."""

    values: dict[str, str]
    sources: dict[str, str]
    settings_file: Path | None = None
    host_section: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # file values hidden by the environment

    def set(self, name: str, value: str, source: str) -> None:
        """Set (or replace) one setting, recording who set it."""
        self.values[name] = value
        self.sources[name] = source

    def count(self, source: str) -> int:
        return sum(1 for s in self.sources.values() if s == source)

    def names_from(self, source: str) -> list[str]:
        return sorted(n for n, s in self.sources.items() if s == source)


def read_settings_file(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """``(Values, Host)`` of a ``local.settings.json``; raises :class:`LocalSettingsError` naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise LocalSettingsError(f"{path}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise LocalSettingsError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise LocalSettingsError(f"{path}: must hold a JSON object")
    if data.get("IsEncrypted") is True:
        raise LocalSettingsError(f"{path}: IsEncrypted is true; the local runtime reads only plain values "
                                 "(decrypt the file, or set the values in the environment)")
    values = data.get("Values", {})
    if not isinstance(values, dict):
        raise LocalSettingsError(f"{path}: Values must be an object of strings")
    out: dict[str, str] = {}
    for name, value in values.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str | int | float):
            raise LocalSettingsError(f"{path}: Values.{name} must be a string")
        out[str(name)] = str(value)
    host = data.get("Host", {})
    return out, host if isinstance(host, dict) else {}


def resolve_app_settings(settings_file: Path | None, environ: Mapping[str, str] | None = None) -> AppSettings:
    """Merge ``settings_file`` Values, the environment and the app's declared defaults (see module doc)."""
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    host: dict[str, Any] = {}
    skipped: list[str] = []
    if settings_file is not None:
        file_values, host = read_settings_file(settings_file)
        for name, value in file_values.items():
            if environ.get(name):
                skipped.append(name)
                continue
            values[name], sources[name] = value, SOURCE_FILE
    for name, value in environ.items():
        if value and name not in values:
            values[name], sources[name] = value, SOURCE_ENVIRONMENT
    for setting in SETTINGS:
        if not values.get(setting.name) and setting.default is not None:
            values[setting.name], sources[setting.name] = setting.default, SOURCE_DEFAULT
    return AppSettings(values, sources, settings_file, host, sorted(skipped))


def resolve_expression(text: str, settings: Mapping[str, str]) -> str:
    """Replace each ``%NAME%`` in ``text`` with the app setting ``NAME``.

    :raises LocalSettingsError: a named setting is not set (or empty).
    """
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        value = settings.get(name)
        if not value:
            raise LocalSettingsError(f"'%{name}%' does not resolve to a value: app setting {name} is not set")
        return value

    return _EXPRESSION.sub(replace, text)


def parse_timespan(text: str | int | float) -> float:
    """Seconds in a host.json timespan: ``[d.]hh:mm:ss[.fff]`` (or a plain number of seconds)."""
    if isinstance(text, int | float):
        return float(text)
    match = _TIMESPAN.match(str(text).strip())
    if not match:
        raise LocalSettingsError(f"{text!r} is not a timespan (expected [d.]hh:mm:ss)")
    days = int(match.group("days") or 0)
    return days * 86400 + int(match.group("h")) * 3600 + int(match.group("m")) * 60 + float(match.group("s"))


@dataclass(frozen=True)
class QueueOptions:
    """``host.json`` ``extensions.queues`` with the Storage extension 5.x defaults."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    message_encoding: str = "base64"
    min_polling_interval: float = 0.1


@dataclass(frozen=True)
class HostConfig:
    """The parts of ``host.json`` the local runtime honours."""

    queues: QueueOptions = field(default_factory=QueueOptions)
    blob_parallelism: int = 8
    route_prefix: str = "api"
    function_timeout: float | None = 300.0


def load_host_json(path: Path, cpu_count: int | None = None) -> HostConfig:
    """Read ``host.json``; a missing file gives the host's defaults."""
    cpus = cpu_count or os.cpu_count() or 1
    if not path.exists():
        return HostConfig(queues=QueueOptions(new_batch_threshold=cpus * 16 // 2), blob_parallelism=8 * cpus)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LocalSettingsError(f"{path}: cannot read it as JSON ({exc})") from None
    extensions = data.get("extensions") or {}
    q = extensions.get("queues") or {}
    try:
        batch = int(q.get("batchSize", 16))
        if not 1 <= batch <= 32:
            raise LocalSettingsError(f"{path}: extensions.queues.batchSize {batch} is outside 1..32")
        encoding = str(q.get("messageEncoding", "base64")).lower()
        if encoding not in ("base64", "none"):
            raise LocalSettingsError(f"{path}: extensions.queues.messageEncoding must be base64 or none")
        queues = QueueOptions(
            batch_size=batch,
            new_batch_threshold=int(q.get("newBatchThreshold", cpus * batch // 2)),
            max_polling_interval=max(0.1, parse_timespan(q.get("maxPollingInterval", "00:01:00"))),
            visibility_timeout=parse_timespan(q.get("visibilityTimeout", "00:00:00")),
            max_dequeue_count=max(1, int(q.get("maxDequeueCount", 5))),
            message_encoding=encoding,
        )
        blobs = extensions.get("blobs") or {}
        parallelism = int(blobs.get("maxDegreeOfParallelism", 8 * cpus))
        http = extensions.get("http") or {}
        prefix = str(http.get("routePrefix", "api")).strip("/")
        timeout_text = data.get("functionTimeout")
        timeout = None if timeout_text in (None, "-1", -1) else parse_timespan(timeout_text)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, LocalSettingsError):
            raise
        raise LocalSettingsError(f"{path}: {exc}") from None
    return HostConfig(queues=queues, blob_parallelism=max(1, parallelism), route_prefix=prefix,
                      function_timeout=timeout)
