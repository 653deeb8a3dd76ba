"""Check Power BI requests (and answers) against the official Swagger 2.0 definition.

``SwaggerValidator(spec_path).validate(method, url_or_path, query, body)`` returns the
operationId, or raises :class:`SwaggerMismatch` naming what is wrong: an unknown path or
method, an unknown, missing or ill-typed query/path parameter (type, int32 range,
``minimum``/``maximum``, ``enum``, ``uuid`` format), or a body that does not match the schema.
Schemas are converted to JSON Schema Draft 4 (``$ref`` to ``#/definitions/...`` resolved
against the spec's definitions; ``x-*``, ``readOnly``, ``discriminator`` and ``example``
dropped; ``x-nullable`` honoured) and checked with ``jsonschema``'s Draft4Validator.
Request bodies are checked strictly: an object schema that lists its properties (and has no
``allOf``/``additionalProperties`` of its own) takes no other properties, so a misspelt field
is caught instead of silently turning a standard refresh into an "enhanced" one.

Known gaps of the swagger snapshot, patched here on purpose (see tests/data/README.md and
shared/notes/powerbi-api.md section 1.2):

* ``DatasetRefreshRequest`` has no ``timeout``; the live REST reference has one: a string
  ``hh:mm:ss`` matching ``^([0-1]?[0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$``. It is added.
* ``DatasetRefreshRequest`` marks ``notifyOption`` required, yet its own operation's
  Limitations say "for enhanced refresh, notifyOption is not required and must be excluded
  from the request body". So the body must have ``notifyOption`` (standard refresh) or at
  least one enhanced field, and not both.
* ``DatasetRefreshRequest`` does not say ``type: object``; it is added (a JSON array body
  would otherwise pass).

Paths are matched relative to ``/v1.0/myorg``: a full URL, an absolute path
(``/v1.0/myorg/groups``) or a relative one (``groups``) are all accepted.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from jsonschema import Draft4Validator

__all__ = ["BASE_PATH", "SwaggerMismatch", "SwaggerValidator"]

BASE_PATH = "/v1.0/myorg"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_INT32 = (-(2**31), 2**31 - 1)
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch")
_DROPPED_KEYS = ("readOnly", "discriminator", "example", "externalDocs", "xml")

#: The live REST reference's ``timeout`` of a refresh request (missing from the snapshot).
REFRESH_TIMEOUT_PATTERN = r"^([0-1]?[0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$"
_ENHANCED_FIELDS = (
    "type",
    "commitMode",
    "maxParallelism",
    "retryCount",
    "objects",
    "applyRefreshPolicy",
    "effectiveDate",
    "timeout",
)


class SwaggerMismatch(ValueError):
    """A request does not match the Power BI API definition; the message says where."""


class _Route:
    def __init__(self, template: str, item: Mapping[str, Any]) -> None:
        self.template = template
        self.item = item
        relative = template[len(BASE_PATH) :] if template.startswith(BASE_PATH) else template
        self.segments = [s for s in relative.strip("/").split("/") if s]
        self.patterns = [self._compile(s) for s in self.segments]
        # Literal segments win over parameters, earlier positions first.
        self.rank = tuple(0 if "{" not in s else 1 for s in self.segments)

    @staticmethod
    def _compile(segment: str) -> re.Pattern[str]:
        parts = re.split(r"(\{[^}]+\})", segment)
        regex = "".join(
            f"(?P<{p[1:-1].replace('-', '_').replace('$', '_')}>[^/]+)" if p.startswith("{") else re.escape(p)
            for p in parts
        )
        return re.compile(f"^{regex}$")

    def match(self, segments: list[str]) -> dict[str, str] | None:
        if len(segments) != len(self.segments):
            return None
        values: dict[str, str] = {}
        for pattern, template_segment, segment in zip(self.patterns, self.segments, segments, strict=True):
            found = pattern.match(segment)
            if not found:
                return None
            names = re.findall(r"\{([^}]+)\}", template_segment)
            for name in names:
                values[name] = unquote(found.group(name.replace("-", "_").replace("$", "_")))
        return values


class SwaggerValidator:
    """Validates requests against a Swagger 2.0 file (the Power BI ``swagger.json``).

    :param spec_path: the swagger file.
    :keyword strict_bodies: refuse undeclared properties in request bodies (default True).
    """

    def __init__(self, spec_path: str | Path, *, strict_bodies: bool = True) -> None:
        with open(spec_path, encoding="utf-8") as handle:
            self.spec: dict[str, Any] = json.load(handle)
        if self.spec.get("swagger") != "2.0":
            raise ValueError(f"{spec_path} is not a Swagger 2.0 file")
        self._strict = strict_bodies
        self._definitions = {name: _convert(schema) for name, schema in self.spec.get("definitions", {}).items()}
        self._patch_known_gaps(self._definitions)
        self._strict_definitions = (
            {name: _strict(schema) for name, schema in self._definitions.items()} if strict_bodies else None
        )
        self._routes = sorted(
            (_Route(template, item) for template, item in self.spec.get("paths", {}).items()),
            key=lambda route: route.rank,
        )
        self._by_operation = {
            op["operationId"]: (route, method)
            for route in self._routes
            for method, op in route.item.items()
            if method in _METHODS and isinstance(op, dict) and "operationId" in op
        }

    # -- public ------------------------------------------------------------------------------

    def operation(self, method: str, url_or_path: str) -> str:
        """The operationId for a method and path (no parameter checks)."""
        route, _, op = self._resolve(method, url_or_path)
        return str(op.get("operationId") or f"{method.upper()} {route.template}")

    def validate(
        self,
        method: str,
        url_or_path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> str:
        """Check one request; return its operationId.

        ``query`` (name → value) is merged over any query string in ``url_or_path``. ``body``
        is the decoded JSON body, None for none.

        :raises SwaggerMismatch: the request does not fit the definition.
        """
        route, path_values, op = self._resolve(method, url_or_path)
        operation_id = str(op.get("operationId") or f"{method.upper()} {route.template}")
        where = f"{operation_id} ({method.upper()} {route.template})"
        merged = dict(parse_qsl(urlsplit(url_or_path).query, keep_blank_values=True))
        merged.update({str(k): v for k, v in (query or {}).items()})

        parameters = self._parameters(route, op)
        declared_query = {p["name"]: p for p in parameters if p.get("in") == "query"}
        for name in merged:
            if name not in declared_query:
                raise SwaggerMismatch(
                    f"{where}: unknown query parameter {name!r}; declared: {sorted(declared_query) or 'none'}"
                )
        for param in parameters:
            location = param.get("in")
            name = param["name"]
            if location == "path":
                _check_value(where, f"path parameter {name!r}", param, path_values.get(name))
            elif location == "query":
                if name in merged:
                    _check_value(where, f"query parameter {name!r}", param, merged[name])
                elif param.get("required"):
                    raise SwaggerMismatch(f"{where}: required query parameter {name!r} is missing")

        body_params = [p for p in parameters if p.get("in") == "body"]
        if body is None:
            if body_params and body_params[0].get("required"):
                raise SwaggerMismatch(f"{where}: a request body is required")
        elif not body_params:
            raise SwaggerMismatch(f"{where}: takes no request body, got {type(body).__name__}")
        else:
            definitions = self._strict_definitions if self._strict else self._definitions
            schema = _convert(body_params[0].get("schema", {}))
            if self._strict:
                schema = _strict(schema)
            _check_schema(where, "request body", schema, definitions or {}, body)
        return operation_id

    def validate_response(self, method: str, url_or_path: str, status: int, body: Any) -> str:
        """Check an answer's status is declared for the operation and its body fits the schema.

        Only success answers are described by this swagger (it lists no 4xx/5xx), so callers
        should pass 2xx answers. Response checks are not strict: extra properties are allowed.
        """
        route, _, op = self._resolve(method, url_or_path)
        operation_id = str(op.get("operationId") or f"{method.upper()} {route.template}")
        where = f"{operation_id} ({method.upper()} {route.template})"
        responses = op.get("responses", {})
        declared = responses.get(str(status)) or responses.get("default")
        if declared is None:
            raise SwaggerMismatch(f"{where}: status {status} is not declared; declared: {sorted(responses)}")
        if "$ref" in declared:
            declared = self._ref(declared["$ref"])
        schema = declared.get("schema")
        if schema is not None and body is not None:
            _check_schema(where, f"{status} response body", _convert(schema), self._definitions, body)
        elif schema is not None and body is None and status != 204:
            raise SwaggerMismatch(f"{where}: a {status} response body is declared but none was sent")
        return operation_id

    # -- internals ---------------------------------------------------------------------------

    def _resolve(self, method: str, url_or_path: str) -> tuple[_Route, dict[str, str], Mapping[str, Any]]:
        path = urlsplit(url_or_path).path
        if path.startswith(BASE_PATH + "/") or path == BASE_PATH:
            path = path[len(BASE_PATH) :]
        elif path.startswith("/"):
            raise SwaggerMismatch(f"path {path!r} is not under {BASE_PATH}")
        segments = [s for s in path.strip("/").split("/") if s]
        for route in self._routes:
            values = route.match(segments)
            if values is None:
                continue
            op = route.item.get(method.lower())
            if not isinstance(op, dict):
                allowed = sorted(m.upper() for m in route.item if m in _METHODS)
                raise SwaggerMismatch(f"{method.upper()} is not defined on {route.template}; allowed: {allowed}")
            return route, values, op
        raise SwaggerMismatch(f"unknown path {BASE_PATH}/{'/'.join(segments)}")

    def _ref(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise SwaggerMismatch(f"unsupported $ref {ref!r}")
        node: Any = self.spec
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def _parameters(self, route: _Route, op: Mapping[str, Any]) -> list[dict[str, Any]]:
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for param in list(route.item.get("parameters", [])) + list(op.get("parameters", [])):
            resolved = self._ref(param["$ref"]) if "$ref" in param else param
            merged[(resolved["name"], resolved["in"])] = resolved
        return list(merged.values())

    @staticmethod
    def _patch_known_gaps(definitions: dict[str, Any]) -> None:
        request = definitions.get("DatasetRefreshRequest")
        if request is None:
            return
        request.setdefault("properties", {})["timeout"] = {
            "type": "string",
            "pattern": REFRESH_TIMEOUT_PATTERN,
        }
        request["required"] = [r for r in request.get("required", []) if r != "notifyOption"]
        if not request["required"]:
            del request["required"]
        enhanced = {"anyOf": [{"required": [name]} for name in _ENHANCED_FIELDS]}
        request["type"] = "object"
        request["allOf"] = [
            {
                "description": "a refresh body needs notifyOption (standard refresh) or at least one of "
                + ", ".join(_ENHANCED_FIELDS)
                + " (enhanced refresh)",
                "anyOf": [{"required": ["notifyOption"]}, enhanced],
            },
            {
                "description": "notifyOption must be excluded from an enhanced refresh body "
                "(the operation's own Limitations)",
                "not": {"allOf": [{"required": ["notifyOption"]}, enhanced]},
            },
        ]


def _convert(schema: Any) -> Any:
    """A Swagger 2.0 schema as JSON Schema Draft 4 (refs kept; resolved against definitions)."""
    if isinstance(schema, list):
        return [_convert(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-") or key in _DROPPED_KEYS:
            continue
        if key in ("properties", "definitions", "patternProperties"):
            converted[key] = {name: _convert(sub) for name, sub in value.items()}
        else:
            converted[key] = _convert(value)
    if "$ref" in converted:  # Draft 4 ignores siblings of $ref; say so explicitly
        converted = {"$ref": converted["$ref"]}
    if schema.get("x-nullable") and "type" in converted:
        kinds = converted["type"] if isinstance(converted["type"], list) else [converted["type"]]
        converted["type"] = [*kinds, "null"]
    return converted


def _strict(schema: Any) -> Any:
    """Forbid undeclared properties in object schemas that list theirs and don't compose."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {
        key: ({name: _strict(sub) for name, sub in value.items()} if key == "properties" else _strict(value))
        for key, value in schema.items()
    }
    composes = any(
        isinstance(part, dict) and ("$ref" in part or "properties" in part) for part in result.get("allOf", [])
    )
    if "properties" in result and not composes and "additionalProperties" not in result:
        result["additionalProperties"] = False
        result.setdefault("type", "object")
    return result


def _check_schema(where: str, what: str, schema: Any, definitions: Mapping[str, Any], value: Any) -> None:
    root = dict(copy.deepcopy(schema)) if isinstance(schema, dict) else {}
    root["definitions"] = definitions
    validator = Draft4Validator(root)
    # Most specific first: a concrete keyword before a composite one, a deeper location before the root.
    errors = sorted(
        validator.iter_errors(value),
        key=lambda e: (e.validator in ("not", "anyOf", "oneOf", "allOf"), -len(e.absolute_path)),
    )
    if errors:
        first = errors[0]
        location = "/".join(str(p) for p in first.absolute_path) or "(root)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        described = isinstance(first.schema, dict) and first.validator in ("not", "anyOf", "oneOf")
        detail = first.schema.get("description") if described else None
        raise SwaggerMismatch(
            f"{where}: {what} does not match the schema at {location}: {detail or first.message}{more}"
        )


def _check_value(where: str, what: str, param: Mapping[str, Any], raw: Any) -> None:
    """Type, format, range and enum of one path/query parameter value (a string from the URL)."""
    if raw is None:
        if param.get("required"):
            raise SwaggerMismatch(f"{where}: {what} is missing")
        return
    kind = param.get("type", "string")
    text = str(raw).lower() if isinstance(raw, bool) else str(raw)
    value: Any = text
    if kind == "integer":
        if isinstance(raw, bool) or not _INTEGER.match(text):
            raise SwaggerMismatch(f"{where}: {what} must be an integer, got {raw!r}")
        value = int(text)
        if param.get("format") == "int32" and not _INT32[0] <= value <= _INT32[1]:
            raise SwaggerMismatch(f"{where}: {what} is out of the int32 range: {raw!r}")
    elif kind == "number":
        if isinstance(raw, bool) or not _NUMBER.match(text):
            raise SwaggerMismatch(f"{where}: {what} must be a number, got {raw!r}")
        value = float(text)
    elif kind == "boolean":
        if text not in ("true", "false"):
            raise SwaggerMismatch(f"{where}: {what} must be true or false, got {raw!r}")
    elif kind == "string":
        if param.get("format") == "uuid" and not _UUID.match(text):
            raise SwaggerMismatch(f"{where}: {what} must be a UUID, got {raw!r}")
        if "pattern" in param and not re.search(param["pattern"], text):
            raise SwaggerMismatch(f"{where}: {what} does not match {param['pattern']!r}: {raw!r}")
    if kind in ("integer", "number"):
        if "minimum" in param and value < param["minimum"]:
            raise SwaggerMismatch(f"{where}: {what} must be >= {param['minimum']}, got {raw!r}")
        if "maximum" in param and value > param["maximum"]:
            raise SwaggerMismatch(f"{where}: {what} must be <= {param['maximum']}, got {raw!r}")
    if "enum" in param and value not in param["enum"]:
        raise SwaggerMismatch(f"{where}: {what} must be one of {param['enum']}, got {raw!r}")
