"""``PowerBIClient``: the few Power BI REST calls this app needs, on ``requests``.

Design rules (see shared/notes/powerbi-api.md):

* A token is asked of the credential on **every** call (azure-identity caches and renews), so a
  refresh that outlives the ~1 h token lifetime is followed to the end.
* A 401, or a 403 whose body says the token expired (Power BI answers ``403 TokenExpired``
  rather than 401), gets exactly **one** retry with a fresh token. azure-identity hands out
  its cached token until shortly before ``expires_on``, so a plain ``get_token`` could return
  the very token that was just refused. The retry therefore passes ``claims``: a claims
  challenge makes MSAL bypass its access-token cache (documented for
  ``acquire_token_for_client`` / ``acquire_token_silent_with_error``; ManagedIdentityCredential
  then calls the identity endpoint again). The claims are those of the service's
  ``WWW-Authenticate: Bearer ... claims="<base64>"`` challenge when it sends one, else the
  standard "token issued after now" challenge ``{"access_token":{"nbf":{"essential":true,
  "value":"<epoch>"}}}``. A credential that cannot take claims (a ``get_token`` without the
  keyword; AzureCliCredential, which refuses claims with CredentialUnavailableError; an identity
  provider that rejects them) is asked once more without them, and whatever it returns is used
  for the single retry.
* The client never sleeps and never loops on 429/5xx: it raises the matching error from
  :mod:`refresh.powerbi.errors` (with ``retry_after``) and the queue worker re-queues.
* Refresh ids come from the POST's ``x-ms-request-id``, else ``RequestId``, else the last path
  segment of ``Location``. A refresh is never looked up as "the latest one".
* OData string literals are quoted per the OData ABNF (``'`` doubled) and the whole value is
  percent-encoded (space ``%20``, ``'`` ``%27``, UTF-8 for the rest).
* Token failures are transient: ``ClientAuthenticationError`` (incl. CredentialUnavailableError,
  which azure-identity also raises when the identity endpoint answers 5xx) and any other failure of
  the credential become a retryable :class:`TokenError` carrying the credential's own message; a
  network failure reaching the identity endpoint (azure-core ``ServiceRequestError``/
  ``ServiceResponseError``) becomes a retryable :class:`TransportError`. Both say
  ``before_request``: the Power BI request was not sent.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    ServiceRequestError,
    ServiceResponseError,
)

from refresh.core.validation import GUID_RE
from refresh.powerbi.errors import (
    NameResolutionError,
    NotRefreshableError,
    PowerBIError,
    TokenError,
    TransportError,
    error_from_response,
    parse_error_body,
)
from refresh.powerbi.models import (
    Dataset,
    RefreshStatus,
    Workspace,
    clean_text,
    dataset_from_api,
    refresh_from_details,
    refresh_from_history_entry,
    workspace_from_api,
)
from refresh.powerbi.refresh_body import DEFAULT_ENHANCED_TYPE, build_refresh_body, whole_number

__all__ = [
    "DEFAULT_ENHANCED_TYPE",
    "PowerBIClient",
    "TokenCredential",
    "build_refresh_body",
    "odata_string",
]

_LOGGER = logging.getLogger(__name__)

_CLAIMS_PARAM = re.compile(r'claims="([^"]*)"', re.IGNORECASE)
_MAX_LISTED = 20


class _AccessToken(Protocol):
    token: str


class TokenCredential(Protocol):
    """What the client needs of a credential: azure-identity's ``get_token``."""

    def get_token(self, *scopes: str, **kwargs: Any) -> _AccessToken:
        """Return an access token for ``scopes``."""
        ...


def odata_string(value: str) -> str:
    """An OData string literal: single quotes around ``value``, each ``'`` doubled.

    >>> odata_string("O'Brien Sales")
    "'O''Brien Sales'"
    """
    return "'" + value.replace("'", "''") + "'"


def _is_guid(value: str) -> bool:
    return bool(GUID_RE.match(value))


def _segment(value: str) -> str:
    """One URL path segment; ids come from config, so never let them add segments or a query."""
    if not value or not str(value).strip():
        raise ValueError("an id must not be empty")
    return quote(str(value), safe="")



def _challenge_claims(header: str | None) -> str | None:
    """The decoded ``claims`` of a ``WWW-Authenticate: Bearer ... claims="<base64>"`` challenge."""
    if not header:
        return None
    match = _CLAIMS_PARAM.search(header)
    if not match:
        return None
    raw = match.group(1).strip()
    try:
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("utf-8")
        if isinstance(json.loads(decoded), dict):
            return decoded
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    return None


def _fresh_token_claims() -> str:
    """The standard claims challenge asking for a token issued from now on."""
    return json.dumps({"access_token": {"nbf": {"essential": True, "value": str(int(time.time()))}}})


def _token_rejected(response: requests.Response) -> bool:
    """401, or 403 saying the token expired (Power BI's ``TokenExpired``)."""
    if response.status_code == 401:
        return True
    if response.status_code != 403:
        return False
    code, message = parse_error_body(response.content)
    text = (message or "").lower()
    return (code or "").lower() == "tokenexpired" or ("token" in text and "expired" in text)


class PowerBIClient:
    """Power BI REST client for workspace/dataset lookup and dataset refreshes.

    :param base_url: API root, e.g. ``https://api.powerbi.com/v1.0/myorg``.
    :param scope: OAuth scope, e.g. ``https://analysis.windows.net/powerbi/api/.default``.
    :param credential: an azure-identity credential (anything with ``get_token(scope)``).
    :keyword session: the ``requests.Session`` to send with (injectable transport); the client
        closes only a session it created.
    :keyword timeout: seconds, passed as ``timeout`` to every HTTP call.
    :keyword clock: monotonic clock for the lookup cache.
    :keyword cache_ttl: seconds a workspace or dataset lookup is cached.

    ``calls`` counts the HTTP requests sent (a token retry counts twice). Thread-safe.
    """

    def __init__(
        self,
        base_url: str,
        scope: str,
        credential: TokenCredential,
        *,
        session: requests.Session | None = None,
        timeout: float = 30,
        clock: Callable[[], float] = time.monotonic,
        cache_ttl: float = 300,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._scope = scope
        self._credential = credential
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        self._timeout = timeout
        self._clock = clock
        self._cache_ttl = cache_ttl
        self._cache: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self.calls = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP session if the client created it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> PowerBIClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def clear_cache(self) -> None:
        """Forget every cached workspace and dataset lookup."""
        with self._lock:
            self._cache.clear()

    # -- lookups -----------------------------------------------------------------------------

    def get_workspace(self, name_or_id: str) -> Workspace:
        """The workspace with this id (a GUID) or exact name, cached for ``cache_ttl`` seconds.

        Both go through ``GET groups?$filter=...`` (``id eq '<guid>'`` / ``name eq '<name>'``),
        which lists only workspaces this identity can access.

        :raises NameResolutionError: none or several workspaces match.
        """
        if not isinstance(name_or_id, str) or not name_or_id.strip():
            raise ValueError("a workspace name or id must be a non-empty string")
        key = ("workspace", name_or_id)
        cached = self._cache_get(key)
        if isinstance(cached, Workspace):
            return cached
        by_id = _is_guid(name_or_id)
        field = "id" if by_id else "name"
        payload = self._get_json("groups", query=[("$filter", f"{field} eq {odata_string(name_or_id)}")])
        found = [workspace_from_api(v) for v in _value_list(payload) if isinstance(v, Mapping)]
        if by_id:
            matches = [w for w in found if w.id.lower() == name_or_id.lower()]
        else:
            # The service may compare case-insensitively; prefer the exact spelling when it is there.
            exact = [w for w in found if w.name == name_or_id]
            matches = exact or [w for w in found if w.name.casefold() == name_or_id.casefold()]
        if len(matches) != 1:
            raise self._resolution_error("workspace", field, name_or_id, matches, found)
        workspace = matches[0]
        self._cache_put(key, workspace)
        return workspace

    def get_dataset(self, workspace_id: str, name_or_id: str, *, require_refreshable: bool = True) -> Dataset:
        """The dataset with this id or exact name in a workspace.

        ``GET groups/{id}/datasets`` has no ``$filter``, so the list is fetched (cached per
        workspace for ``cache_ttl`` seconds) and matched here: by id first, then by exact name.

        :raises NameResolutionError: no dataset or several datasets match; the message lists the matches
            (or the same name in another case), never the workspace's other datasets.
        :raises NotRefreshableError: ``require_refreshable`` and the dataset's ``isRefreshable``
            is false (DirectQuery, live connection...): a refresh POST would only fail.
        """
        if not isinstance(name_or_id, str) or not name_or_id.strip():
            raise ValueError("a dataset name or id must be a non-empty string")
        datasets = self.list_datasets(workspace_id)
        matches = [d for d in datasets if d.id.lower() == name_or_id.lower()]
        field = "id"
        if not matches:
            matches = [d for d in datasets if d.name == name_or_id]
            field = "name"
        if len(matches) != 1:
            # Name only what the caller asked for: its matches, or the same name spelt in another case;
            # never the other datasets of the workspace (the caller may not be entitled to see them).
            similar = [d for d in datasets if d.name.casefold() == name_or_id.casefold()]
            raise self._resolution_error(f"dataset (workspace {workspace_id})", field, name_or_id, matches, similar)
        dataset = matches[0]
        if require_refreshable and not dataset.is_refreshable:
            raise NotRefreshableError(
                f"dataset {dataset.name!r} ({dataset.id}) is not refreshable (isRefreshable is false; "
                "DirectQuery and live-connection models cannot be refreshed)"
            )
        return dataset

    def list_datasets(self, workspace_id: str) -> list[Dataset]:
        """All datasets of a workspace (``GET groups/{id}/datasets``), cached for ``cache_ttl``."""
        key = ("datasets", workspace_id.lower())
        cached = self._cache_get(key)
        if cached is not None:
            return list(cached)
        payload = self._get_json(f"groups/{_segment(workspace_id)}/datasets")
        datasets = tuple(dataset_from_api(v) for v in _value_list(payload) if isinstance(v, Mapping))
        self._cache_put(key, datasets)
        return list(datasets)

    # -- refreshes ---------------------------------------------------------------------------

    def start_refresh(self, workspace_id: str, dataset_id: str, body: Mapping[str, Any]) -> str:
        """POST a refresh (see :func:`build_refresh_body`) and return its refresh id.

        The id is taken from ``x-ms-request-id``, else ``RequestId``, else the last path segment
        of ``Location``.

        :raises PowerBIError: (a subclass for the known failures) also when the 202 carries no id.
        """
        path = self._refreshes_path(workspace_id, dataset_id)
        response = self._request("POST", path, body=dict(body), expected=(200, 202))
        headers = response.headers
        refresh_id = headers.get("x-ms-request-id") or headers.get("RequestId")
        if not refresh_id and headers.get("Location"):
            refresh_id = urlsplit(headers["Location"]).path.rstrip("/").rsplit("/", 1)[-1] or None
        if not refresh_id:
            raise PowerBIError(
                "Power BI accepted the refresh but sent no refresh id (no x-ms-request-id, RequestId "
                "or Location header)",
                status=response.status_code,
            )
        _LOGGER.info(
            "Started %s refresh %s of dataset %s in workspace %s",
            "standard" if set(body) <= {"notifyOption"} else "enhanced",
            refresh_id,
            dataset_id,
            workspace_id,
        )
        return refresh_id

    def get_refresh(self, workspace_id: str, dataset_id: str, refresh_id: str) -> RefreshStatus:
        """Execution details of an enhanced refresh (``GET .../refreshes/{id}``; 202 = running)."""
        path = f"{self._refreshes_path(workspace_id, dataset_id)}/{_segment(refresh_id)}"
        response = self._request("GET", path, expected=(200, 202))
        payload = _json_object(response, f"GET {path}")
        return refresh_from_details(payload, refresh_id, in_progress=response.status_code == 202)

    def get_refresh_history(self, workspace_id: str, dataset_id: str, top: int = 10) -> list[RefreshStatus]:
        """The ``top`` newest refreshes of a dataset (``GET .../refreshes?$top=N``), newest first."""
        whole_number(top, "top", 1)
        payload = self._get_json(self._refreshes_path(workspace_id, dataset_id), query=[("$top", str(top))])
        return [refresh_from_history_entry(v) for v in _value_list(payload) if isinstance(v, Mapping)]

    def find_refresh(self, workspace_id: str, dataset_id: str, request_id: str, top: int = 10) -> RefreshStatus | None:
        """The history entry whose ``requestId`` is ``request_id``, or None if it is not there yet.

        A just-posted refresh can take a while to appear in the history; None is then normal
        and the caller should look again later. Never falls back to "the latest refresh".
        """
        wanted = request_id.lower()
        for entry in self.get_refresh_history(workspace_id, dataset_id, top=top):
            if entry.request_id.lower() == wanted:
                return entry
        return None

    def cancel_refresh(self, workspace_id: str, dataset_id: str, refresh_id: str) -> None:
        """Cancel an enhanced refresh (``DELETE .../refreshes/{id}``)."""
        path = f"{self._refreshes_path(workspace_id, dataset_id)}/{_segment(refresh_id)}"
        self._request("DELETE", path, expected=(200, 202, 204))
        _LOGGER.info("Cancelled refresh %s of dataset %s in workspace %s", refresh_id, dataset_id, workspace_id)

    # -- plumbing ----------------------------------------------------------------------------

    @staticmethod
    def _refreshes_path(workspace_id: str, dataset_id: str) -> str:
        return f"groups/{_segment(workspace_id)}/datasets/{_segment(dataset_id)}/refreshes"

    def _cache_get(self, key: tuple[str, ...]) -> Any:
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            expires, value = entry
            if self._clock() >= expires:
                del self._cache[key]
                return None
            return value

    def _cache_put(self, key: tuple[str, ...], value: Any) -> None:
        if self._cache_ttl <= 0:
            return
        with self._lock:
            self._cache[key] = (self._clock() + self._cache_ttl, value)

    @staticmethod
    def _resolution_error(
        kind: str, field: str, wanted: str, matches: Sequence[Any], found: Sequence[Any]
    ) -> NameResolutionError:
        listed = tuple(f"{item.name!r} ({item.id})" for item in (matches or found)[:_MAX_LISTED])
        more = len(matches or found) - len(listed)
        suffix = f" and {more} more" if more > 0 else ""
        if matches:
            message = f"{len(matches)} {kind}s match {field} {wanted!r}: {', '.join(listed)}{suffix}"
        elif listed:
            message = f"no {kind} with {field} {wanted!r}; same name in another case: {', '.join(listed)}{suffix}"
        else:
            message = f"no {kind} with {field} {wanted!r} is visible to this identity (found none)"
        return NameResolutionError(message, found=listed)

    def _url(self, path: str, query: Sequence[tuple[str, str]] | None) -> str:
        url = f"{self._base_url}/{path}"
        if query:
            url += "?" + "&".join(f"{name}={quote(value, safe='')}" for name, value in query)
        return url

    def _token(self, *, claims: str | None = None) -> str:
        """A bearer token from the credential; with ``claims``, a freshly issued one if it can."""
        try:
            if claims is not None:
                try:
                    return self._credential.get_token(self._scope, claims=claims).token
                except (TypeError, ClientAuthenticationError) as exc:
                    # No claims keyword, or claims refused (AzureCliCredential, an identity
                    # provider that rejects them): the plain token is the best there is.
                    _LOGGER.warning(
                        "%s could not be forced to a fresh token (%s); asking it again without claims",
                        type(self._credential).__name__,
                        type(exc).__name__,
                    )
            return self._credential.get_token(self._scope).token
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise TransportError(f"could not reach the identity endpoint for a Power BI token: {exc}",
                                 before_request=True) from exc
        except ClientAuthenticationError as exc:
            raise TokenError(f"could not acquire a Power BI token from {type(self._credential).__name__}: "
                             f"{clean_text(str(exc.message))}") from exc
        except Exception as exc:
            raise TokenError(f"could not acquire a Power BI token: {type(exc).__name__}: {exc}") from exc

    def _send(self, method: str, url: str, token: str, body: Any, what: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        with self._lock:
            self.calls += 1
        try:
            return self._session.request(
                method,
                url,
                headers=headers,
                json=body,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            raise TransportError(f"{what} timed out after {self._timeout:g} s") from exc
        except requests.RequestException as exc:
            raise TransportError(f"{what} failed: {type(exc).__name__}: {exc}") from exc

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] | None = None,
        body: Any = None,
        expected: tuple[int, ...] = (200,),
    ) -> requests.Response:
        url = self._url(path, query)
        what = f"{method} {path}"
        response = self._send(method, url, self._token(), body, what)
        if _token_rejected(response):
            _LOGGER.info(
                "Power BI refused the token for %s (HTTP %s); retrying once with a fresh token",
                what,
                response.status_code,
            )
            claims = _challenge_claims(response.headers.get("WWW-Authenticate")) or _fresh_token_claims()
            response = self._send(method, url, self._token(claims=claims), body, what)
        request_id = response.headers.get("RequestId") or response.headers.get("x-ms-request-id")
        _LOGGER.debug("%s -> HTTP %s (request id %s)", what, response.status_code, request_id)
        if response.status_code not in expected:
            raise error_from_response(response.status_code, response.headers, response.content, what=what)
        return response

    def _get_json(self, path: str, *, query: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
        response = self._request("GET", path, query=query)
        return _json_object(response, f"GET {path}")


def _json_object(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise PowerBIError(
            f"{what} answered HTTP {response.status_code} with a body that is not a JSON object",
            status=response.status_code,
            request_id=response.headers.get("RequestId") or response.headers.get("x-ms-request-id"),
        )
    return payload


def _value_list(payload: Mapping[str, Any]) -> list[Any]:
    value = payload.get("value")
    return value if isinstance(value, list) else []
