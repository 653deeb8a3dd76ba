"""Storage clients built from a Functions *connection* setting, the way the host reads it.

A connection named ``NAME`` is either

* a connection string in ``NAME`` (Azurite locally, or a key-based account), or
* identity-based: ``NAME__blobServiceUri`` / ``NAME__queueServiceUri`` / ``NAME__tableServiceUri``
  (or ``NAME__serviceUri`` for the one service a trigger uses, or ``NAME__accountName`` for the
  public cloud), with ``NAME__credential=managedidentity`` and ``NAME__clientId`` for a
  user-assigned identity. Without ``__credential`` the app uses ``DefaultAzureCredential``.

Every client gets connect and read timeouts from ``STORAGE_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .settings import SettingsError

_SERVICES = ("blob", "queue", "table")


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
    if service in ("blob", "queue"):
        if service == "blob":
            from azure.storage.blob import ExponentialRetry
        else:
            from azure.storage.queue import ExponentialRetry

        # The SDK's default first retry waits 15 s; a refresh trigger should recover within seconds:
        # 1 s, 3 s, 5 s, 9 s, 17 s (plus jitter) for transient storage errors.
        kwargs.setdefault("retry_policy", ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=5))
    if service == "blob":
        from azure.storage.blob import BlobServiceClient as cls

        # Stream commits in small pieces: the SDK's default first GET is 32 MiB.
        kwargs.update(max_single_get_size=4 * 1024 * 1024, max_chunk_get_size=4 * 1024 * 1024)
    elif service == "queue":
        from azure.storage.queue import QueueServiceClient as cls
    else:
        from azure.data.tables import TableServiceClient as cls
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
