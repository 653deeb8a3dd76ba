"""Storage clients built from a Functions *connection* setting, the way the host reads it.

A connection named ``NAME`` is either

* a connection string in ``NAME`` (Azurite locally, or a key-based account), or
* identity-based: ``NAME__blobServiceUri`` / ``NAME__queueServiceUri`` / ``NAME__tableServiceUri``
  (or ``NAME__serviceUri`` for the one service a trigger uses, or ``NAME__accountName`` for the
  public cloud), with ``NAME__credential=managedidentity`` and ``NAME__clientId`` for a
  user-assigned identity. Without ``__credential`` the app uses ``DefaultAzureCredential``.

Every client gets connect and read timeouts from ``STORAGE_TIMEOUT_SECONDS``.

A caller that must answer within a deadline (the Event Grid webhook: Event Grid waits 30 s, then
redelivers) wraps its work in :func:`budget`: inside it every storage request of every client made
here is bounded by what is left of the budget (its connect and read timeouts are capped, no request
starts once it is spent, and no retry waits past it), and :class:`BudgetExceeded` ends the work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from refresh.core.settings import SettingsError


class BudgetExceeded(TimeoutError):
    """The time budget of the current work (:func:`budget`) is spent; the storage call was not made.

    Not an ``AzureError``: the SDK retry policies let it through instead of retrying it."""


@dataclass(frozen=True)
class Timer:
    """Where a budget reads the time and how it waits (injectable: tests pass a fake)."""

    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class Budget:
    """A deadline for all storage calls made by one piece of work."""

    what: str
    seconds: float
    deadline: float
    timer: Timer

    def remaining(self) -> float:
        return self.deadline - self.timer.monotonic()

    def exceeded(self, detail: str) -> BudgetExceeded:
        return BudgetExceeded(f"{self.what}: the {self.seconds:g} s budget is spent ({detail})")


_BUDGET: ContextVar[Budget | None] = ContextVar("refresh_storage_budget", default=None)
# The timer of budgets opened without one (tests replace it with a fake).
DEFAULT_TIMER = Timer()


@contextmanager
def budget(seconds: float, what: str, timer: Timer | None = None) -> Iterator[Budget]:
    """Bound every storage call made in this context (this thread) to ``seconds`` in total."""
    timer = timer or DEFAULT_TIMER
    current = Budget(what, seconds, timer.monotonic() + seconds, timer)
    token = _BUDGET.set(current)
    try:
        yield current
    finally:
        _BUDGET.reset(token)


def _budget_sleep(delay: float, sleep: Callable[[], None]) -> None:
    """A retry policy's wait: outside a budget the SDK's own; inside one, only if another attempt still
    fits (through the budget's timer), else the work ends now."""
    current = _BUDGET.get()
    if current is None:
        sleep()
        return
    if delay >= current.remaining():
        raise current.exceeded(f"no time left for a retry after {delay:.1f} s")
    if delay > 0:
        current.timer.sleep(delay)


def _budget_transport(connection_timeout: float, read_timeout: float) -> Any:
    """An azure-core requests transport that obeys the active :func:`budget`: no attempt starts once it
    is spent, and each attempt's connect and read timeouts are capped to what is left. (Outside a
    budget it is the plain transport.) Every SDK here sends each attempt through its transport."""
    from azure.core.pipeline.transport import RequestsTransport

    class BudgetTransport(RequestsTransport):  # type: ignore[misc]  # azure-core's transports are untyped
        def send(self, request: Any, **kwargs: Any) -> Any:
            current = _BUDGET.get()
            if current is not None:
                left = current.remaining()
                if left <= 0:
                    raise current.exceeded(f"{request.method} {request.url.split('?')[0]} not sent")
                kwargs["connection_timeout"] = min(kwargs.get("connection_timeout", connection_timeout), left)
                kwargs["read_timeout"] = min(kwargs.get("read_timeout", read_timeout), left)
            return super().send(request, **kwargs)

    return BudgetTransport(connection_timeout=connection_timeout, read_timeout=read_timeout)


def _storage_retry(service: str) -> Any:
    """Blob/queue retry policy: 1 s, 3 s, 5 s, 9 s, 17 s (plus jitter) for transient storage errors (the
    SDK's default first retry waits 15 s; a refresh trigger should recover within seconds), waiting
    through the active budget. (Child clients wrap the transport, so the wait is bounded here, in the
    policy, not in the transport.)"""
    from azure.storage.blob import ExponentialRetry as BlobRetry
    from azure.storage.queue import ExponentialRetry as QueueRetry

    base: type[Any] = BlobRetry if service == "blob" else QueueRetry

    class BudgetRetry(base):  # type: ignore[misc]
        def sleep(self, settings: Any, transport: Any) -> None:
            _budget_sleep(self.get_backoff_time(settings), lambda: super(BudgetRetry, self).sleep(settings, transport))

    return BudgetRetry(initial_backoff=1, increment_base=2, retry_total=5)


def _table_service_class() -> Any:
    """``TableServiceClient`` whose retry policy (built inside the client, with no option to pass one)
    waits through the active budget; its table clients share that pipeline."""
    from azure.data.tables import TableServiceClient
    from azure.data.tables._policies import TablesRetryPolicy

    class BudgetTablesRetry(TablesRetryPolicy):
        def sleep(self, settings: Any, transport: Any, response: Any = None) -> None:
            delay = (self.get_retry_after(response) if response else None) or self.get_backoff_time(settings)
            _budget_sleep(delay, lambda: super(BudgetTablesRetry, self).sleep(settings, transport, response))

    class BudgetTableServiceClient(TableServiceClient):
        def _configure_policies(self, **kwargs: Any) -> list[Any]:
            policies = super()._configure_policies(**kwargs)
            if not any(type(p) is TablesRetryPolicy for p in policies):
                raise RuntimeError("azure-data-tables no longer builds a TablesRetryPolicy (refresh.core.connections)")
            retry: Any = BudgetTablesRetry  # TablesRetryPolicy.__init__ is untyped
            return [retry(**kwargs) if type(p) is TablesRetryPolicy else p for p in policies]

    return BudgetTableServiceClient


def _connection_string_parts(value: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    for item in value.split(";"):
        if "=" in item:
            key, _, val = item.partition("=")
            parts[key.strip().lower()] = val.strip()
    return parts


def is_configured(name: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether a connection string or any identity-based setting exists for ``name``."""
    env = os.environ if env is None else env
    return bool(env.get(name)) or any(k.startswith(name + "__") and env[k] for k in env)


def service_url(name: str, service: str, env: Mapping[str, str] | None = None) -> str | None:
    """The service endpoint of an identity-based connection, or None for a connection string."""
    env = os.environ if env is None else env
    if env.get(name):
        return None
    for key in (f"{name}__{service}ServiceUri", f"{name}__serviceUri"):
        if env.get(key):
            return env[key].rstrip("/")
    account = env.get(f"{name}__accountName")
    if account:
        return f"https://{account}.{service}.core.windows.net"
    raise SettingsError(
        name,
        f"no connection configured: set {name} to a connection string, or {name}__{service}ServiceUri "
        f"(or {name}__accountName) for an identity-based connection",
    )


def credential_for(name: str, env: Mapping[str, str] | None = None) -> Any:
    """The azure-identity credential an identity-based connection ``name`` asks for."""
    env = os.environ if env is None else env
    kind = (env.get(f"{name}__credential") or "").strip().lower()
    client_id = env.get(f"{name}__clientId") or None
    if kind == "managedidentity":
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=client_id)
    if kind:
        raise SettingsError(f"{name}__credential", f"{kind!r} is not supported (use 'managedidentity' or unset)")
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=client_id)


def _client(name: str, service: str, timeout: float, env: Mapping[str, str] | None, **extra: Any) -> Any:
    env = os.environ if env is None else env
    kwargs: dict[str, Any] = {"connection_timeout": timeout, "read_timeout": timeout, **extra}
    kwargs.setdefault("transport", _budget_transport(kwargs["connection_timeout"], kwargs["read_timeout"]))
    if service in ("blob", "queue"):
        kwargs.setdefault("retry_policy", _storage_retry(service))
    cls: Any
    if service == "blob":
        from azure.storage.blob import BlobServiceClient

        cls = BlobServiceClient
        # Stream commits in small pieces: the SDK's default first GET is 32 MiB.
        kwargs.update(max_single_get_size=4 * 1024 * 1024, max_chunk_get_size=4 * 1024 * 1024)
    elif service == "queue":
        from azure.storage.queue import QueueServiceClient

        cls = QueueServiceClient
    else:
        cls = _table_service_class()
    conn = env.get(name)
    if conn:
        parts = _connection_string_parts(conn)
        if not parts:
            raise SettingsError(name, "is not a connection string (expected key=value pairs separated by ';')")
        if service == "table" and parts.get("usedevelopmentstorage") == "true":
            conn = _DEV_STORAGE
        return cls.from_connection_string(conn, **kwargs)
    url = service_url(name, service, env)
    return cls(url, credential=credential_for(name, env), **kwargs)


_DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_DEV_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + _DEV_KEY + ";"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)


def blob_service(name: str, timeout: float = 30, env: Mapping[str, str] | None = None, **extra: Any) -> Any:
    """``azure.storage.blob.BlobServiceClient`` for connection ``name``."""
    return _client(name, "blob", timeout, env, **extra)


def queue_service(name: str, timeout: float = 30, env: Mapping[str, str] | None = None, **extra: Any) -> Any:
    """``azure.storage.queue.QueueServiceClient`` for connection ``name``."""
    return _client(name, "queue", timeout, env, **extra)


def table_service(name: str, timeout: float = 30, env: Mapping[str, str] | None = None, **extra: Any) -> Any:
    """``azure.data.tables.TableServiceClient`` for connection ``name``."""
    return _client(name, "table", timeout, env, **extra)
