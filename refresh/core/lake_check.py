"""What the app needs from the lake, checked with the app's own identity (issue 10 item 7).

Used by ``GET /api/health`` (check ``lake``) and ``python -m refresh check-config`` (when the lake
connection ``LAKE_STORAGE`` is configured). Two data-plane calls on the gold container, without retries:

* list one blob: the container exists and the app may list it. A storage firewall or disabled public
  network access answers 403 ``AuthorizationFailure`` ("This request is not authorized to perform this
  operation"), a missing role 403 ``AuthorizationPermissionMismatch``: each gets a message naming the fix.
* Get Account Information (``x-ms-is-hns-enabled``): without a hierarchical namespace, Event Grid sends
  no ``BlobRenamed`` events, so Spark/Databricks commits (written by renaming a temporary file) reach the
  app only through the timer sweep. A warning, not an error.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from refresh.core import connections
from refresh.core.settings import LAKE_STORAGE, Settings, SettingsError

NETWORK_HINT = (
    "the lake's network access refuses the app: its firewall (networkRuleSet.defaultAction=Deny) or "
    "disabled public network access blocks this app's outbound address. Allow the app's network "
    "(VNet integration with a service or private endpoint on the lake; README: Hardening)"
)
ROLE_HINT = (
    "the app's identity may not list the container: give it Storage Blob Data Reader on the gold "
    "container (infra/lake-access.bicep does)"
)
NO_HNS_HINT = (
    "Event Grid sends Microsoft.Storage.BlobRenamed only for accounts with a hierarchical namespace "
    "(ADLS Gen2), so Spark/Databricks commits (a temporary file renamed into _delta_log/) reach the app "
    "only through the timer sweep (SWEEP_SCHEDULE), minutes later; commits written in place still "
    "trigger at once"
)


@dataclass(frozen=True)
class LakeCheck:
    """The outcome: ``ok`` False when the app cannot read the gold container (``error`` says why)."""

    ok: bool
    container: str
    hierarchical_namespace: bool | None = None
    error: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "container": self.container,
                               "hierarchical_namespace": self.hierarchical_namespace}
        if self.error:
            out["error"] = self.error
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


def _storage_error(exc: Exception, container: str) -> str:
    """A clear sentence for a failed listing of the gold container."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    code = getattr(exc, "error_code", None) or ""
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "reason", "") or "")
    if code == "ContainerNotFound" or (status == 404 and not code):
        return f"the gold container {container!r} does not exist in the lake account (GOLD_CONTAINER)"
    if code == "AuthorizationPermissionMismatch" or "using this permission" in str(exc):
        return f"403 AuthorizationPermissionMismatch listing {container!r}: {ROLE_HINT}"
    if code == "AuthorizationFailure" or (not code and "not authorized to perform this operation" in str(exc)):
        return f"403 AuthorizationFailure listing {container!r}: {NETWORK_HINT}"
    if isinstance(exc, ClientAuthenticationError) or code in ("AuthenticationFailed", "InvalidAuthenticationInfo"):
        return f"the lake refused the app's credentials ({code or status}): check LAKE_STORAGE and the identity"
    if isinstance(exc, ServiceRequestError):
        return f"the lake account cannot be reached ({type(exc).__name__}): check LAKE_STORAGE"
    if isinstance(exc, HttpResponseError):
        return f"listing {container!r} failed: {status} {code or message}".rstrip()
    return f"listing {container!r} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def check_container(container_client: Any, container: str) -> LakeCheck:
    """Run both checks on a ``ContainerClient`` of the gold container."""
    from azure.core.exceptions import AzureError

    try:
        next(iter(container_client.list_blobs(results_per_page=1).by_page()), None)
    except AzureError as exc:
        return LakeCheck(ok=False, container=container, error=_storage_error(exc, container))
    try:
        info = container_client.get_account_information()
    except AzureError as exc:
        code = getattr(exc, "error_code", None) or type(exc).__name__
        return LakeCheck(ok=True, container=container, warnings=(
            f"cannot tell whether the lake account has a hierarchical namespace (Get Account Information "
            f"failed: {code}); check isHnsEnabled with 'az storage account show'. Without one, {NO_HNS_HINT}",))
    hns = info.get("is_hns_enabled")
    if hns is True:
        return LakeCheck(ok=True, container=container, hierarchical_namespace=True)
    return LakeCheck(ok=True, container=container, hierarchical_namespace=hns, warnings=(
        f"the lake account reports no hierarchical namespace (is_hns_enabled={hns}): it is not ADLS Gen2. "
        f"{NO_HNS_HINT}",))


def check_lake(settings: Settings, env: Mapping[str, str] | None = None, timeout: float = 5.0) -> LakeCheck:
    """Check the gold container of connection ``LAKE_STORAGE`` (one attempt per call, ``timeout`` each)."""
    service = connections.blob_service(LAKE_STORAGE, min(timeout, settings.storage_timeout), env, retry_total=0)
    container = settings.gold_container
    return check_container(service.get_container_client(container), container)


def check_config_lake(env: Mapping[str, str] | None = None) -> int:
    """The lake part of ``python -m refresh check-config``: silent when ``LAKE_STORAGE`` is not configured
    (the config check works offline); else one line on stderr per finding. 1 when the app cannot read
    the gold container, else 0."""
    if not connections.is_configured(LAKE_STORAGE, env):
        return 0
    try:
        result = check_lake(Settings.from_env(env), env, timeout=10.0)
    except SettingsError as exc:
        print(f"lake: not checked: {exc}", file=sys.stderr)
        return 1
    if not result.ok:
        print(f"lake: ERROR: {result.error}", file=sys.stderr)
        return 1
    for warning in result.warnings:
        print(f"lake: WARNING: {warning}", file=sys.stderr)
    print(f"lake: gold container {result.container!r} is readable", file=sys.stderr)
    return 0
