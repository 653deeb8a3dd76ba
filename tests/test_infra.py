"""Infrastructure checks: checkov, settings parity, bindings, azure.yaml, scripts, secrets.

There is no Bicep compiler on these machines (it is a .NET binary from GitHub), so this file reads
the Bicep text itself with a small parser for the subset the templates use. On top of it:

* ``scripts/check_infra.sh`` (checkov, offline) passes with zero failed checks;
* app settings parity in both directions with ``refresh.core.settings.SETTINGS``: every setting the code
  reads is set by the template, or has a default that README.md documents (and settings
  used as ``%NAME%`` binding expressions are always set, because the host resolves them, not the
  Python defaults); every setting the template sets is read by the code, is a connection setting
  (``AzureWebJobsStorage__*``, ``LAKE_STORAGE__*``), or is on a short platform allow-list;
* connections are identity-based and are read the same way by ``refresh.core.connections``;
* a "linker" pass: module parameters and outputs match the module files, and every name an
  expression uses is declared;
* the Event Grid subscription filters, evaluated on sample events, let exactly the Delta commit
  events through, to the function names that exist in function_app.py (AST and ``get_functions()``);
* azure.yaml, main.parameters.json, the workflows, and the postdeploy and Power BI scripts (run
  against a fake ``az`` and a loopback Power BI stand-in).
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import re
import stat
import subprocess
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from refresh.core import connections
from refresh.core.settings import HOST_STORAGE, LAKE_STORAGE, SETTINGS

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
FUNCTION_BICEP = INFRA / "app" / "function.bicep"
DOCS = ROOT / "README.md"

# Settings the template may set although the code does not list them in SETTINGS: read by the
# Functions platform (Application Insights) or by azure-identity's DefaultAzureCredential.
PLATFORM_SETTINGS = {
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
}
# Never on Flex Consumption (the runtime is functionAppConfig.runtime; no Azure Files content
# share) and never a plain connection string.
FORBIDDEN_SETTINGS = {
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_WORKER_RUNTIME",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "AzureWebJobsDashboard",
    HOST_STORAGE,
    LAKE_STORAGE,
}
# The identity-based connection suffixes the Functions host (and refresh/core/connections.py) read.
CONNECTION_SUFFIXES = {"blobServiceUri", "queueServiceUri", "tableServiceUri", "serviceUri", "accountName",
                       "credential", "clientId"}
WEBHOOK_FUNCTIONS = ("on_delta_commit", "on_lake_event")


# ================================================================================================
# A reader for the Bicep subset the templates use
# ================================================================================================

@dataclass
class Tok:
    kind: str  # str, num, ident, op, nl, at
    value: Any
    pos: int


@dataclass
class Node:
    kind: str  # obj arr str num bool null ref member call index bin unary ternary if for
    a: Any = None
    b: Any = None
    c: Any = None


@dataclass
class Decl:
    keyword: str  # param var output resource module
    name: str
    type: str = ""  # resource type / module path / param or output type
    value: Node | None = None  # default, expression, or body
    decorators: list[str] = field(default_factory=list)
    existing: bool = False


_TWO_CHAR_OPS = ("==", "!=", "&&", "||", "<=", ">=", "??", "=~", "!~", ".?", "?.")
_BINARY_OPS = {"==", "!=", "&&", "||", "<", ">", "<=", ">=", "??", "=~", "!~", "+", "-", "*", "/", "%"}


def _string_end(text: str, i: int) -> tuple[list[Any], int]:
    """Parts (literal text and ('expr', source)) of the string starting at text[i] == "'"."""
    parts: list[Any] = []
    buf: list[str] = []
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            buf.append({"n": "\n", "t": "\t", "r": "\r"}.get(text[i + 1], text[i + 1]))
            i += 2
        elif c == "'":
            parts.append("".join(buf))
            return parts, i + 1
        elif text.startswith("${", i):
            parts.append("".join(buf))
            buf = []
            j = _interpolation_end(text, i + 2)
            parts.append(("expr", text[i + 2 : j]))
            i = j + 1
        else:
            buf.append(c)
            i += 1
    raise SyntaxError("unterminated string")


def _interpolation_end(text: str, i: int) -> int:
    depth = 0
    while i < len(text):
        c = text[i]
        if c == "'":
            _, i = _string_end(text, i)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise SyntaxError("unterminated interpolation")


def tokenize(text: str) -> list[Tok]:
    toks: list[Tok] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            toks.append(Tok("nl", "\n", i))
            i += 1
        elif c in " \t\r":
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            i = text.index("*/", i + 2) + 2
        elif text.startswith("'''", i):
            j = text.index("'''", i + 3)
            toks.append(Tok("str", [text[i + 3 : j]], i))
            i = j + 3
        elif c == "'":
            parts, j = _string_end(text, i)
            toks.append(Tok("str", parts, i))
            i = j
        elif c.isdigit():
            j = i
            while j < n and text[j].isdigit():
                j += 1
            toks.append(Tok("num", int(text[i:j]), i))
            i = j
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            toks.append(Tok("ident", text[i:j], i))
            i = j
        elif c == "@":
            toks.append(Tok("at", "@", i))
            i += 1
        else:
            op = next((o for o in _TWO_CHAR_OPS if text.startswith(o, i)), c)
            toks.append(Tok("op", op, i))
            i += len(op)
    return toks


class BicepParser:
    def __init__(self, text: str):
        self.toks = tokenize(text)
        self.i = 0

    # -- token helpers --------------------------------------------------------------------------
    def peek(self, skip_nl: bool = False) -> Tok | None:
        j = self.i
        while skip_nl and j < len(self.toks) and self.toks[j].kind == "nl":
            j += 1
        return self.toks[j] if j < len(self.toks) else None

    def next(self) -> Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def skip_nl(self) -> None:
        while self.i < len(self.toks) and self.toks[self.i].kind == "nl":
            self.i += 1

    def expect(self, value: str) -> Tok:
        self.skip_nl()
        tok = self.next()
        if tok.value != value:
            raise SyntaxError(f"expected {value!r} at {tok.pos}, got {tok.value!r}")
        return tok

    def at(self, value: str, skip_nl: bool = False) -> bool:
        tok = self.peek(skip_nl)
        return tok is not None and tok.kind in ("op", "ident") and tok.value == value

    # -- statements -----------------------------------------------------------------------------
    def declarations(self) -> list[Decl]:
        decls: list[Decl] = []
        decorators: list[str] = []
        while True:
            self.skip_nl()
            tok = self.peek()
            if tok is None:
                return decls
            if tok.kind == "at":
                self.next()
                decorator = self.postfix()
                name = decorator.a.a if decorator.kind == "call" else decorator.a
                decorators.append(name)
                continue
            word = self.next().value
            if word == "targetScope":
                self.expect("=")
                self.expr()
            elif word in ("param", "output"):
                name = self.next().value
                type_ = self.next().value
                if word == "output" and type_ == "resource":
                    self.next()
                value = None
                if self.at("="):
                    self.next()
                    value = self.expr()
                decls.append(Decl(word, name, type_, value, decorators))
            elif word == "var":
                name = self.next().value
                self.expect("=")
                decls.append(Decl("var", name, "", self.expr(), decorators))
            elif word in ("resource", "module"):
                name = self.next().value
                type_tok = self.next()
                existing = self.at("existing")
                if existing:
                    self.next()
                self.expect("=")
                decls.append(Decl(word, name, "".join(type_tok.value), self.expr(), decorators, existing))
            else:
                raise SyntaxError(f"unsupported statement {word!r} at {tok.pos}")
            decorators = []

    # -- expressions ----------------------------------------------------------------------------
    def expr(self) -> Node:
        cond = self.binary()
        if self.at("?"):
            self.next()
            self.skip_nl()
            yes = self.expr()
            self.expect(":")
            self.skip_nl()
            return Node("ternary", cond, yes, self.expr())
        return cond

    def binary(self) -> Node:
        left = self.unary()
        while (tok := self.peek()) is not None and tok.kind == "op" and tok.value in _BINARY_OPS:
            self.next()
            self.skip_nl()
            left = Node("bin", tok.value, left, self.unary())
        return left

    def unary(self) -> Node:
        if self.at("!") or self.at("-"):
            op = self.next().value
            return Node("unary", op, self.unary())
        return self.postfix()

    def postfix(self) -> Node:
        node = self.primary()
        while (tok := self.peek()) is not None and tok.kind == "op":
            if tok.value in (".", ".?", "?."):
                self.next()
                node = Node("member", node, self.next().value)
            elif tok.value == "(":
                self.next()
                args = []
                while not self.at(")", skip_nl=True):
                    self.skip_nl()
                    args.append(self.expr())
                    self.skip_nl()
                    if self.at(","):
                        self.next()
                self.expect(")")
                node = Node("call", node, args)
            elif tok.value == "[":
                self.next()
                index = self.expr()
                self.expect("]")
                node = Node("index", node, index)
            else:
                break
        return node

    def primary(self) -> Node:
        self.skip_nl()
        tok = self.next()
        if tok.kind == "str":
            return Node("str", tok.value)
        if tok.kind == "num":
            return Node("num", tok.value)
        if tok.kind == "ident":
            if tok.value in ("true", "false"):
                return Node("bool", tok.value == "true")
            if tok.value == "null":
                return Node("null")
            if tok.value == "if" and self.at("("):
                self.next()
                cond = self.expr()
                self.expect(")")
                return Node("if", cond, self.expr())
            return Node("ref", tok.value)
        if tok.value == "(":
            inner = self.expr()
            self.expect(")")
            return inner
        if tok.value == "{":
            return self.object()
        if tok.value == "[":
            return self.array()
        raise SyntaxError(f"unexpected {tok.value!r} at {tok.pos}")

    def object(self) -> Node:
        entries: list[tuple[str, Node]] = []
        while True:
            self.skip_nl()
            if self.at("}"):
                self.next()
                return Node("obj", entries)
            key_tok = self.next()
            key = key_tok.value
            if key_tok.kind == "str":
                key = "".join(p if isinstance(p, str) else "${" + p[1] + "}" for p in key_tok.value)
            self.expect(":")
            entries.append((key, self.expr()))
            if self.at(","):
                self.next()

    def array(self) -> Node:
        if self.at("for", skip_nl=True):
            self.skip_nl()
            self.next()
            names = []
            while not self.at("in"):
                tok = self.next()
                if tok.kind == "ident":
                    names.append(tok.value)
            self.next()
            iterable = self.expr()
            self.expect(":")
            body = self.expr()
            self.expect("]")
            return Node("for", names, iterable, body)
        items = []
        while True:
            self.skip_nl()
            if self.at("]"):
                self.next()
                return Node("arr", items)
            items.append(self.expr())
            if self.at(","):
                self.next()


@dataclass
class BicepFile:
    path: Path
    decls: list[Decl]

    def by(self, keyword: str) -> dict[str, Decl]:
        return {d.name: d for d in self.decls if d.keyword == keyword}

    def params(self) -> dict[str, Decl]:
        return self.by("param")

    def vars(self) -> dict[str, Decl]:
        return self.by("var")

    def resources(self) -> dict[str, Decl]:
        return self.by("resource")

    def modules(self) -> dict[str, Decl]:
        return self.by("module")

    def outputs(self) -> dict[str, Decl]:
        return self.by("output")


_PARSED: dict[Path, BicepFile] = {}


def bicep(path: Path) -> BicepFile:
    path = path.resolve()
    if path not in _PARSED:
        _PARSED[path] = BicepFile(path, BicepParser(path.read_text(encoding="utf-8")).declarations())
    return _PARSED[path]


def all_bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


def walk(node: Any):
    """Every Node inside ``node`` (depth first), including string interpolations."""
    if isinstance(node, Node):
        yield node
        if node.kind == "str":
            if node.b is None:  # interpolations, parsed once so node identities are stable
                node.b = [BicepParser(part[1]).expr() for part in node.a if isinstance(part, tuple)]
            yield from walk(node.b)
            return
        for child in (node.a, node.b, node.c):
            yield from walk(child)
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from walk(item)


def body_object(node: Node) -> Node:
    """The object of a resource/module body, through ``if (...)`` and ``[for ...]``."""
    while node.kind in ("if", "for"):
        node = node.b if node.kind == "if" else node.c
    assert node.kind == "obj", f"expected an object body, got {node.kind}"
    return node


def entry(obj: Node, *path: str) -> Node | None:
    for key in path:
        if obj is None or obj.kind != "obj":
            return None
        obj = dict(obj.a).get(key)
    return obj


def literal(node: Node | None) -> Any:
    """The Python value of a literal node (no references, no interpolation)."""
    assert node is not None
    if node.kind == "str":
        assert all(isinstance(p, str) for p in node.a), "interpolated string"
        return "".join(node.a)
    if node.kind in ("num", "bool"):
        return node.a
    if node.kind == "null":
        return None
    if node.kind == "arr":
        return [literal(item) for item in node.a]
    if node.kind == "obj":
        return {k: literal(v) for k, v in node.a}
    raise AssertionError(f"not a literal: {node.kind}")


def source_of(node: Node) -> str:
    """A compact textual form, for assertions about references (e.g. 'storage.properties...')."""
    if node.kind == "ref":
        return node.a
    if node.kind == "member":
        return f"{source_of(node.a)}.{node.b}"
    if node.kind == "call":
        return f"{source_of(node.a)}({', '.join(source_of(x) for x in node.b)})"
    if node.kind == "str":
        return "'" + "".join(p if isinstance(p, str) else "${" + p[1] + "}" for p in node.a) + "'"
    return node.kind


def _unique_string(*parts: str) -> str:
    """A stand-in for Bicep's uniqueString(): deterministic, 13 lowercase characters, different for
    different inputs (the real one is a 64-bit hash; only those properties matter on paper)."""
    import base64
    import hashlib

    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return base64.b32encode(digest).decode().lower()[:13]


_FUNCTIONS = {
    "take": lambda file, value, n: value[:n],
    "toLower": lambda file, value: value.lower(),
    "uniqueString": lambda file, *parts: _unique_string(*parts),
    "loadJsonContent": lambda file, path: json.loads((file.path.parent / path).read_text(encoding="utf-8")),
}


def evaluate(node: Node, env: dict[str, Any], file: BicepFile) -> Any:
    """Evaluate literals, references (env first, then the file's vars), interpolation, ternaries
    on evaluable conditions and ``empty()``; anything else is an error."""
    kind = node.kind
    if kind in ("num", "bool"):
        return node.a
    if kind == "null":
        return None
    if kind == "str":
        return "".join(p if isinstance(p, str) else str(evaluate(BicepParser(p[1]).expr(), env, file))
                       for p in node.a)
    if kind == "arr":
        return [evaluate(item, env, file) for item in node.a]
    if kind == "obj":
        return {k: evaluate(v, env, file) for k, v in node.a}
    if kind == "ref":
        if node.a in env:
            return env[node.a]
        var = file.vars().get(node.a)
        if var is None:
            raise KeyError(f"{node.a} is not given and not a var of {file.path.name}")
        return evaluate(var.value, env, file)
    if kind == "ternary":
        return evaluate(node.b if evaluate(node.a, env, file) else node.c, env, file)
    if kind == "unary" and node.a == "!":
        return not evaluate(node.b, env, file)
    if kind == "call" and node.a.kind == "ref" and node.a.a == "empty":
        return not evaluate(node.b[0], env, file)
    if kind == "call" and node.a.kind == "ref" and node.a.a in _FUNCTIONS:
        return _FUNCTIONS[node.a.a](file, *[evaluate(arg, env, file) for arg in node.b])
    if kind == "call" and node.a.kind == "ref" and f"{node.a.a}()" in env:  # resourceGroup(), subscription()
        return env[f"{node.a.a}()"]
    if kind == "member":
        base = evaluate(node.a, env, file)
        assert isinstance(base, dict) and node.b in base, f"cannot evaluate {source_of(node)} in {file.path.name}"
        return base[node.b]
    raise AssertionError(f"cannot evaluate {source_of(node)} in {file.path.name}")


# ================================================================================================
# The app settings the template sets
# ================================================================================================

@dataclass
class AppSetting:
    name: str
    value: Node
    var: str
    branch: str  # "" (always), or "yes" / "no": one branch of a ternary

    @property
    def conditional(self) -> bool:
        return bool(self.branch)


def template_app_settings() -> dict[str, list[AppSetting]]:
    """name -> every place function.bicep sets it, from the name/value arrays concatenated into
    siteConfig.appSettings."""
    fb = bicep(FUNCTION_BICEP)
    app = body_object(fb.resources()["functionApp"].value)
    assert source_of(entry(app, "properties", "siteConfig", "appSettings")) == "appSettings"
    merged = fb.vars()["appSettings"].value
    assert merged.kind == "call" and source_of(merged.a) == "concat"
    found: dict[str, list[AppSetting]] = {}
    for arg in merged.b:
        assert arg.kind == "ref", "concat() arguments must be variable names"
        expr = fb.vars()[arg.a].value
        if expr.kind == "for":  # operator-supplied: [for setting in items(<object param>): ...]
            assert source_of(expr.b) == "items(extraAppSettings)"
            assert fb.params()["extraAppSettings"].type == "object"
            continue
        assert expr.kind in ("arr", "ternary"), f"{arg.a} must be an array or a ternary of arrays"
        branches = [(expr, "")] if expr.kind == "arr" else [(expr.b, "yes"), (expr.c, "no")]
        for array, branch in branches:
            assert array.kind == "arr"
            for item in array.a:
                assert item.kind == "obj" and [k for k, _ in item.a] == ["name", "value"], \
                    f"{arg.a}: each item is {{ name: '...', value: ... }}"
                name = literal(entry(item, "name"))
                found.setdefault(name, []).append(AppSetting(name, entry(item, "value"), arg.a, branch))
    # Template-managed settings come after the operator's, so they win on a repeated name.
    assert source_of(merged.b[0]) == "extraAppSettingsList"
    return found


def unconditional_settings() -> set[str]:
    """Names set whatever the parameters: outside a ternary, or in both branches of one."""
    always = set()
    for name, places in template_app_settings().items():
        branches = {(p.var, p.branch) for p in places}
        if any(not b for _, b in branches) or any({(v, "yes"), (v, "no")} <= branches for v, _ in branches):
            always.add(name)
    return always


# ================================================================================================
# function_app.py, read without importing it
# ================================================================================================

@dataclass
class AppFunction:
    name: str
    decorators: dict[str, dict[str, Any]]
    strings: list[str]
    file: Path


def _literal_or_dotted(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        if isinstance(node, ast.Attribute):
            return {"EVENT_GRID": "EventGrid"}.get(node.attr, node.attr)
        return None


def _local_module(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def app_functions() -> dict[str, AppFunction]:
    """Functions registered in function_app.py or in repo modules it imports (blueprints)."""
    entry_file = ROOT / "function_app.py"
    assert entry_file.is_file(), "function_app.py is missing at the repo root"
    todo, seen, found = [entry_file], set(), {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                todo += [m for a in node.names if (m := _local_module(a.name))]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo += [m for m in [_local_module(node.module)] if m]
                todo += [m for a in node.names if (m := _local_module(f"{node.module}.{a.name}"))]
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                decorators: dict[str, dict[str, Any]] = {}
                strings: list[str] = []
                for d in node.decorator_list:
                    if not (isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute)):
                        continue
                    kwargs = {k.arg: _literal_or_dotted(k.value) for k in d.keywords if k.arg}
                    if d.args:
                        kwargs["_args"] = [_literal_or_dotted(a) for a in d.args]
                    decorators[d.func.attr] = kwargs
                    strings += [s.value for s in ast.walk(d) if isinstance(s, ast.Constant)
                                and isinstance(s.value, str)]
                if not any(k.endswith("_trigger") or k in ("route", "schedule") for k in decorators):
                    continue
                name = node.name
                if "function_name" in decorators:
                    fn = decorators["function_name"]
                    name = fn.get("name") or fn["_args"][0]
                found[name] = AppFunction(name, decorators, strings, path)
    return found


_RUNTIME_FUNCTIONS: dict[str, list[dict[str, Any]]] | None = None


def runtime_functions() -> dict[str, list[dict[str, Any]]]:
    """Name -> raw bindings from ``app.get_functions()``, once, in a fresh interpreter."""
    global _RUNTIME_FUNCTIONS
    if _RUNTIME_FUNCTIONS is None:
        code = ("import json, function_app\n"
                "print(json.dumps({f.get_function_name(): [json.loads(b) for b in f.get_raw_bindings()]"
                " for f in function_app.app.get_functions()}))\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AzureWebJobs", "LAKE_STORAGE"))}
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"importing function_app failed:\n{done.stderr}"
        _RUNTIME_FUNCTIONS = json.loads(done.stdout.strip().splitlines()[-1])
    return _RUNTIME_FUNCTIONS


# ================================================================================================
# 1. checkov
# ================================================================================================

def test_check_infra_passes_with_every_skip_justified():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "check_infra.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "check_infra: OK" in done.stdout
    bicep_line = next(line for line in done.stdout.splitlines() if line.startswith("bicep:"))
    counts = dict(re.findall(r"(passed|failed|skipped|parsing errors) (\d+)", bicep_line))
    assert counts["failed"] == "0" and counts["parsing errors"] == "0"
    assert int(counts["passed"]) > 0
    # Every inline skip is used, and every skip reported carries its reason.
    inline = sum(p.read_text().count("//checkov:skip=") for p in all_bicep_files())
    assert int(counts["skipped"]) == inline
    assert done.stdout.count("  skipped CKV_") == inline


def test_checkov_is_pinned_and_run_offline():
    script = (ROOT / "scripts" / "check_infra.sh").read_text()
    assert re.search(r"^CHECKOV_VERSION=\d+\.\d+\.\d+$", script, re.M)
    assert '"checkov==$CHECKOV_VERSION"' in script
    assert script.count("--skip-download") == 1 and "scan bicep infra bicep" in script
    assert ".venv-checkov" in script


# ================================================================================================
# 2. App settings parity
# ================================================================================================

def _documented_defaults() -> dict[str, str]:
    """`NAME` -> `default` from the rows of README.md's settings tables."""
    rows = re.findall(r"^\|\s*`([A-Za-z0-9_]+)`\s*\|\s*`([^`]*)`\s*\|", DOCS.read_text(encoding="utf-8"), re.M)
    return dict(rows)


def _binding_expressions() -> set[str]:
    found = set()
    for fn in app_functions().values():
        for text in fn.strings:
            found |= set(re.findall(r"%([A-Za-z0-9_]+)%", text))
    return found


def test_every_code_setting_is_set_by_the_template_or_has_a_documented_default():
    template = unconditional_settings()
    documented = _documented_defaults()
    for setting in SETTINGS:
        if setting.name in template:
            continue
        assert setting.default is not None, f"{setting.name} has no default and the template does not set it"
        assert documented.get(setting.name) == setting.default, \
            f"{setting.name}: not set by the template, so README.md must document its default " \
            f"{setting.default!r} in a `| \\`{setting.name}\\` | \\`{setting.default}\\` |` row"


def test_binding_expressions_are_always_set_by_the_template():
    expressions = _binding_expressions()
    assert {"GOLD_CONTAINER", "REFRESH_QUEUE", "SWEEP_SCHEDULE"} <= expressions
    missing = expressions - unconditional_settings()
    assert not missing, f"the host resolves %NAME% from app settings only; not set: {sorted(missing)}"


def test_every_template_setting_is_read_by_the_code_or_the_platform():
    code = {s.name for s in SETTINGS}
    for name in template_app_settings():
        assert name not in FORBIDDEN_SETTINGS, f"{name} must not be set (Flex Consumption / no connection strings)"
        prefix, sep, suffix = name.partition("__")
        if sep:
            assert prefix in (HOST_STORAGE, LAKE_STORAGE), f"{name}: unknown connection prefix"
            assert suffix in CONNECTION_SUFFIXES, f"{name}: the host does not read __{suffix}"
        else:
            assert name in code or name in PLATFORM_SETTINGS, f"{name} is set but nothing reads it"


def test_code_settings_that_the_template_sets_are_unconditional():
    settings = template_app_settings()
    always = unconditional_settings()
    for setting in SETTINGS:
        if setting.name in settings:
            assert setting.name in always, f"{setting.name} is set only in one branch"


def test_forbidden_settings_appear_nowhere_in_the_infra():
    for path in [*all_bicep_files(), INFRA / "main.parameters.json"]:
        text = path.read_text(encoding="utf-8")
        for name in FORBIDDEN_SETTINGS - {HOST_STORAGE, LAKE_STORAGE}:
            assert name not in text, f"{name} in {path.name}"
    # No operator-supplied settings in the azd parameters (they could smuggle a connection string).
    assert "extraAppSettings" not in json.loads((INFRA / "main.parameters.json").read_text())["parameters"]


# ================================================================================================
# Connections: identity-based, and read that way by refresh/core/connections.py
# ================================================================================================

@pytest.mark.parametrize("prefix, services", [
    (HOST_STORAGE, ("blob", "queue", "table")),
    # Blob to read _delta_log/; queue because the blob trigger writes its poison queue in the
    # account of its own connection.
    (LAKE_STORAGE, ("blob", "queue")),
])
def test_connections_are_identity_based(prefix, services):
    settings = template_app_settings()
    names = {n for n in settings if n.startswith(prefix + "__")}
    assert names == {f"{prefix}__credential", f"{prefix}__clientId", *(f"{prefix}__{s}ServiceUri" for s in services)}
    assert literal(settings[f"{prefix}__credential"][0].value) == "managedidentity"
    assert source_of(settings[f"{prefix}__clientId"][0].value) == "identityClientId"

    # refresh/core/connections.py reads exactly these names: build the environment the template
    # produces (sample endpoint values) and ask it.
    env = {f"{prefix}__{s}ServiceUri": f"https://acct.{s}.core.windows.net/" for s in services}
    env[f"{prefix}__credential"] = "managedidentity"
    env[f"{prefix}__clientId"] = "00000000-0000-0000-0000-000000000001"
    for service in services:
        assert connections.service_url(prefix, service, env) == f"https://acct.{service}.core.windows.net"
    from azure.identity import ManagedIdentityCredential

    assert isinstance(connections.credential_for(prefix, env), ManagedIdentityCredential)


def test_service_uris_come_from_the_accounts_own_endpoints():
    settings = template_app_settings()
    for service in ("blob", "queue", "table"):
        value = settings[f"{HOST_STORAGE}__{service}ServiceUri"][0].value
        assert source_of(value) == f"storage.properties.primaryEndpoints.{service}"
    main = bicep(INFRA / "main.bicep")
    params = dict(entry(body_object(main.modules()["functionApp"].value), "params").a)
    value = settings[f"{LAKE_STORAGE}__blobServiceUri"][0].value
    assert value.kind == "ref"
    assert source_of(params[value.a]) == "lakeAccount.properties.primaryEndpoints.blob"
    # The blob trigger's connection needs a queue service, used only for its poison queue: the APP
    # storage account's, so nothing is created in the lake and the app holds no queue role there.
    queue = settings[f"{LAKE_STORAGE}__queueServiceUri"][0].value
    assert source_of(queue) == "storage.properties.primaryEndpoints.queue"
    lake = main.resources()["lakeAccount"]
    assert lake.existing and lake.type.startswith("Microsoft.Storage/storageAccounts@")
    assert source_of(entry(lake.value, "scope")) == "resourceGroup(lakeResourceGroupName)"


def test_application_insights_uses_the_identity():
    settings = template_app_settings()
    auth = settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"][0].value
    assert auth.kind == "str" and auth.a == ["ClientId=", ("expr", "identityClientId"), ";Authorization=AAD"]
    assert source_of(settings["APPLICATIONINSIGHTS_CONNECTION_STRING"][0].value) == \
        "applicationInsights.properties.ConnectionString"
    monitoring = bicep(INFRA / "app" / "monitoring.bicep")
    assert literal(entry(body_object(monitoring.resources()["applicationInsights"].value),
                         "properties", "DisableLocalAuth")) is True
    rbac = bicep(INFRA / "app" / "rbac.bicep")
    publisher = body_object(rbac.resources()["metricsPublisher"].value)
    assert source_of(entry(publisher, "scope")) == "applicationInsights"
    assert evaluate(rbac.vars()["monitoringMetricsPublisher"].value, {}, rbac) == "3913510d-42f4-4e42-8a64-420c390055eb"


def test_power_bi_identity_settings():
    settings = template_app_settings()
    client_ids = {source_of(s.value) for s in settings["AZURE_CLIENT_ID"]}
    assert client_ids == {"identityClientId", "powerBiClientId"}  # managed identity / service principal
    secret = settings["AZURE_CLIENT_SECRET"][0]
    assert secret.conditional
    assert source_of(secret.value) == "'@Microsoft.KeyVault(SecretUri=${powerBiClientSecretUri})'"
    assert settings["AZURE_TENANT_ID"][0].conditional
    fb = bicep(FUNCTION_BICEP)
    site = body_object(fb.resources()["functionApp"].value)
    assert source_of(entry(site, "properties", "keyVaultReferenceIdentity")) == "identityId"

    main = bicep(INFRA / "main.bicep")
    secret_param = main.params()["powerBiClientSecret"]
    assert "secure" in secret_param.decorators and literal(secret_param.value) == ""
    assert source_of(main.modules()["keyVault"].value.a) == "useServicePrincipal"
    kv = bicep(INFRA / "app" / "keyvault.bicep")
    vault = entry(body_object(kv.resources()["vault"].value), "properties")
    assert literal(entry(vault, "enableRbacAuthorization")) is True
    assert literal(entry(vault, "enablePurgeProtection")) is True
    reader = body_object(kv.resources()["secretReader"].value)
    assert source_of(entry(reader, "scope")) == "secret"
    assert evaluate(kv.vars()["keyVaultSecretsUser"].value, {}, kv) == "4633458b-17de-408a-b874-0445c86b69e6"


# ================================================================================================
# Security properties of the resources
# ================================================================================================

# siteConfig properties Microsoft's Flex Consumption samples set (besides appSettings): none; the
# template adds minTlsVersion, which Flex documents. Anything else risks ARM error 51021 ("site
# configuration properties ... for Flex Consumption sites is invalid") in regions that enforce the list.
FLEX_SITE_CONFIG = {"minTlsVersion", "appSettings"}


def test_function_app_is_flex_python_311_https_only_without_ftp():
    fb = bicep(FUNCTION_BICEP)
    plan = body_object(fb.resources()["plan"].value)
    assert literal(entry(plan, "sku")) == {"tier": "FlexConsumption", "name": "FC1"}
    assert literal(entry(plan, "properties", "reserved")) is True
    site = body_object(fb.resources()["functionApp"].value)
    assert literal(entry(site, "kind")) == "functionapp,linux"
    assert literal(entry(site, "identity", "type")) == "UserAssigned"
    props = entry(site, "properties")
    assert literal(entry(props, "httpsOnly")) is True
    config = entry(props, "siteConfig")
    assert literal(entry(config, "minTlsVersion")) == "1.2"
    assert {k for k, _ in config.a} <= FLEX_SITE_CONFIG, \
        f"siteConfig properties Flex Consumption may reject: {sorted({k for k, _ in config.a} - FLEX_SITE_CONFIG)}"
    assert literal(entry(props, "functionAppConfig", "runtime")) == {"name": "python", "version": "3.11"}
    deployment = entry(props, "functionAppConfig", "deployment", "storage")
    assert literal(entry(deployment, "type")) == "blobContainer"
    assert literal(entry(deployment, "authentication", "type")) == "UserAssignedIdentity"
    policies = {literal(entry(body_object(r.value), "name")): literal(entry(body_object(r.value), "properties"))
                for r in fb.resources().values() if "basicPublishingCredentialsPolicies" in r.type}
    # Flex has no FTP endpoint: only the scm (zip deploy) basic-auth policy is set.
    assert policies == {"scm": {"allow": False}}
    # The FTP check is skipped with a reason instead of setting ftpsState.
    assert re.search(r"//checkov:skip=CKV_AZURE_78:.*Flex", fb.path.read_text(encoding="utf-8"))


def test_app_storage_is_identity_only():
    sb = bicep(INFRA / "app" / "storage.bicep")
    props = entry(body_object(sb.resources()["storage"].value), "properties")
    assert literal(entry(props, "allowSharedKeyAccess")) is False
    assert literal(entry(props, "allowBlobPublicAccess")) is False
    assert literal(entry(props, "minimumTlsVersion")) == "TLS1_2"
    assert literal(entry(props, "supportsHttpsTrafficOnly")) is True
    # The job queue, its poison queue (the on_refresh_poison trigger) and the tables exist.
    names = {source_of(entry(body_object(r.value), "name")) for r in sb.resources().values()
             if r.type.startswith("Microsoft.Storage/storageAccounts/queueServices/queues@")}
    assert names == {"refreshQueueName", "'${refreshQueueName}-poison'", "'webjobs-blobtrigger-poison'"}


_ROLE_IDS = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Blob Data Reader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
}


def _role_assignments() -> list[tuple[str, str, str, str]]:
    """(file, role name, scope symbol, principal expression) for every role assignment."""
    by_id = {v: k for k, v in _ROLE_IDS.items()}
    found = []
    for path in all_bicep_files():
        bf = bicep(path)
        for res in bf.resources().values():
            if not res.type.startswith("Microsoft.Authorization/roleAssignments@"):
                continue
            body = body_object(res.value)
            if res.value.kind == "for":  # [for roleId in storageRoles: ...]
                roles = bf.vars()[res.value.b.a].value.a
            else:  # subscriptionResourceId('Microsoft.Authorization/roleDefinitions', <role id>)
                roles = [entry(body, "properties", "roleDefinitionId").b[1]]
            for role in roles:
                role_id = evaluate(role, {}, bf)
                assert role_id in by_id, f"{path.name}: unknown role {role_id}"
                found.append((path.name, by_id[role_id], source_of(entry(body, "scope")),
                               source_of(entry(body, "properties", "principalId"))))
    return found


def test_role_assignments_are_least_privilege_and_documented():
    assignments = set(_role_assignments())
    identity = "identityPrincipalId"
    lake_roles = {a for a in assignments if a[0] == "lake.bicep"}
    # The lake gets exactly one role: read on the gold container. No queue, no queue role.
    assert lake_roles == {("lake.bicep", "Storage Blob Data Reader", "goldContainer", identity)}
    for role in ("Storage Blob Data Owner", "Storage Queue Data Contributor", "Storage Table Data Contributor"):
        assert ("rbac.bicep", role, "storage", identity) in assignments
    assert ("rbac.bicep", "Monitoring Metrics Publisher", "applicationInsights", identity) in assignments
    assert ("keyvault.bicep", "Key Vault Secrets User", "secret", "secretReaderPrincipalId") in assignments
    assert ("deadletter.bicep", "Storage Blob Data Contributor", "deadLetterContainer",
            "deadLetterWriterPrincipalId") in assignments

    lake = bicep(INFRA / "app" / "lake.bicep").resources()
    assert lake["goldContainer"].existing
    assert lake["goldContainer"].type.startswith("Microsoft.Storage/storageAccounts/blobServices/containers@")
    created = {name for name, r in lake.items() if not r.existing}
    assert created == {"goldReader", "systemTopic"}, "nothing else is created in the lake's resource group"
    access = bicep(INFRA / "lake-access.bicep")
    lake_module = body_object(access.modules()["lake"].value)
    assert source_of(entry(lake_module, "scope")) == "resourceGroup(lakeResourceGroupName)"

    docs = DOCS.read_text(encoding="utf-8")
    table = [line for line in docs.splitlines() if line.startswith("|")]
    for _, role, _, _ in assignments:
        assert any(role in line for line in table), f"README.md role table lacks {role}"


def _deployed_resources(path: Path, scope: str = "") -> list[tuple[str, str, str]]:
    """(file, resource or module name, scope expression) of everything a template deploys, through
    its modules (an `existing` reference deploys nothing). ``scope`` is the module's own scope
    expression as seen from its parent ('' = the parent's resource group)."""
    bf = bicep(path)
    found = []
    for res in bf.resources().values():
        if not res.existing:
            own = entry(body_object(res.value), "scope")
            found.append((path.name, res.name, scope or (source_of(own) if own is not None and "(" in source_of(own)
                                                           else "")))
    for module in bf.modules().values():
        own = entry(body_object(module.value), "scope")
        module_scope = source_of(own) if own is not None else ""
        found.append((path.name, module.name, scope or module_scope))
        found += _deployed_resources((path.parent / module.type).resolve(), scope or module_scope)
    return found


def test_main_deploys_nothing_outside_the_app_resource_group():
    """azd deletes whole resource groups of what its deployment created (and `azd down --force`, or an
    azd without the ownership checks, deletes them without asking): nothing of infra/main.bicep may
    have a scope in the lake's (or any other) resource group."""
    deployed = _deployed_resources(INFRA / "main.bicep")
    assert len(deployed) > 20
    outside = [d for d in deployed if d[2] and d[2] != "resourceGroup()"]
    assert not outside, f"main.bicep deploys outside its resource group: {outside}"
    # It reads the lake (the blob endpoint for LAKE_STORAGE) through an existing reference only.
    main = bicep(INFRA / "main.bicep")
    for res in main.resources().values():
        scope = entry(body_object(res.value), "scope")
        if scope is not None and "lake" in source_of(scope).lower():
            assert res.existing, f"{res.name} is deployed into the lake's resource group"
    # The lake side is in its own templates, run by the hooks (not by azd's deployment).
    lake_side = _deployed_resources(INFRA / "lake-access.bicep")
    assert ("lake.bicep", "goldReader", "resourceGroup(lakeResourceGroupName)") in lake_side
    assert ("lake.bicep", "systemTopic", "resourceGroup(lakeResourceGroupName)") in lake_side
    subscriptions = _deployed_resources(INFRA / "eventgrid.bicep")
    assert {name for _, name, scope in subscriptions if scope == "resourceGroup(systemTopicResourceGroupName)"} \
        >= {"createdSubscription", "renamedSubscription"}
    text = (INFRA / "main.bicep").read_text(encoding="utf-8")
    assert "lake-access.bicep" in text and "module lake " not in text


# ================================================================================================
# Linker: modules, outputs and names (what `bicep build` would catch)
# ================================================================================================

_BUILTINS = {"resourceGroup", "subscription", "tenant", "deployment", "environment", "az", "sys"}


@pytest.mark.parametrize("path", all_bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_bicep_file_links(path):
    bf = bicep(path)
    declared = set(bf.params()) | set(bf.vars()) | set(bf.resources()) | set(bf.modules())
    loop_vars = {name for d in bf.decls for n in walk(d.value) if n.kind == "for" for name in n.a}
    for decl in bf.decls:
        function_names = {id(n.a) for n in walk(decl.value) if n.kind == "call"}
        for node in walk(decl.value):
            if node.kind == "ref" and id(node) not in function_names:
                assert node.a in declared | loop_vars | _BUILTINS, f"{path.name}: {decl.name} uses undeclared {node.a}"
    for module in bf.modules().values():
        assert not module.type.startswith(("br:", "br/", "ts:", "ts/")), "no registry modules"
        target = (path.parent / module.type).resolve()
        assert target.is_file(), f"{path.name}: module {module.name} -> missing {module.type}"
        tb = bicep(target)
        given = {k for k, _ in entry(body_object(module.value), "params").a}
        assert given <= set(tb.params()), f"{module.name}: unknown params {given - set(tb.params())}"
        required = {n for n, p in tb.params().items() if p.value is None}
        assert required <= given, f"{module.name}: missing params {required - given}"
        for decl in bf.decls:
            for node in walk(decl.value):
                if node.kind == "member" and node.a.kind == "member" and node.a.b == "outputs" \
                        and node.a.a.kind == "ref" and node.a.a.a == module.name:
                    assert node.b in tb.outputs(), f"{module.name}.outputs.{node.b} does not exist"


def test_no_outputs_or_literals_carry_secrets():
    for path in all_bicep_files():
        bf = bicep(path)
        for output in bf.outputs().values():
            text = " ".join(source_of(n) for n in walk(output.value) if n.kind in ("ref", "member", "call", "str"))
            assert not re.search(r"listKeys|listSecrets|ConnectionString|code=|properties\.value\b|password",
                                 text, re.I), f"{path.name}: output {output.name} may expose a secret"
        for param in bf.params().values():
            if re.search(r"(secret|password|key)$", param.name, re.I) and param.type == "string":
                assert "secure" in param.decorators, f"{path.name}: {param.name} must be @secure()"


def test_no_connection_strings_keys_or_registry_modules_in_infra():
    texts = {p: p.read_text(encoding="utf-8") for p in INFRA.rglob("*") if p.is_file()}
    texts[ROOT / "azure.yaml"] = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    for path, text in texts.items():
        for pattern in (r"AccountKey=", r"DefaultEndpointsProtocol", r"SharedAccessSignature", r"[?&]sig=",
                        r"UseDevelopmentStorage", r"\.listKeys\(\)\.keys", r"listAccountSas", r"listServiceSas",
                        r"primaryConnectionString"):
            assert not re.search(pattern, text), f"{path.relative_to(ROOT)} contains {pattern}"
        assert not re.search(r"""['"](br|ts)[:/]""", text), f"{path.relative_to(ROOT)} references a registry module"
    # The only listKeys is the Functions host's system keys, passed on as @secure parameters.
    uses = [(p.name, m) for p, t in texts.items() if p.suffix == ".bicep" for m in re.findall(r"listKeys\([^)]*\)", t)]
    assert uses == [("eventgrid.bicep", "listKeys(functionHost.id, '2024-04-01')")] * 2
    eg = bicep(INFRA / "eventgrid.bicep")
    host = eg.resources()["functionHost"]
    assert host.existing and host.type.startswith("Microsoft.Web/sites/host@")
    assert literal(entry(host.value, "name")) == "default"
    subs = bicep(INFRA / "app" / "lake-subscriptions.bicep").params()
    assert "secure" in subs["blobsExtensionKey"].decorators and "secure" in subs["eventGridExtensionKey"].decorators


# ================================================================================================
# 3. Event Grid: the functions exist, and the filters pass exactly the commit events
# ================================================================================================

def test_webhook_targets_exist_in_function_app_source():
    functions = app_functions()
    for name in WEBHOOK_FUNCTIONS:
        assert name in functions, f"function_app.py does not register {name}"
    blob = functions["on_delta_commit"].decorators["blob_trigger"]
    assert blob.get("source") == "EventGrid"
    assert blob.get("connection") == LAKE_STORAGE
    assert blob.get("path", "").startswith("%GOLD_CONTAINER%/")
    assert "event_grid_trigger" in functions["on_lake_event"].decorators


def test_bindings_from_get_functions_match_the_template():
    functions = runtime_functions()
    for name in WEBHOOK_FUNCTIONS:
        assert name in functions
    blob = next(b for b in functions["on_delta_commit"] if b["type"] == "blobTrigger")
    assert (blob["source"], blob["connection"]) == ("EventGrid", LAKE_STORAGE)
    assert blob["path"].split("/", 1)[0] == "%GOLD_CONTAINER%"
    assert any(b["type"] == "eventGridTrigger" for b in functions["on_lake_event"])
    settings = template_app_settings()
    always = unconditional_settings()
    for name, bindings in functions.items():
        for binding in bindings:
            connection = binding.get("connection")
            if connection:
                assert connection in (HOST_STORAGE, LAKE_STORAGE), f"{name}: unknown connection {connection}"
                assert f"{connection}__credential" in settings, f"{name}: {connection} is not configured"
            for value in binding.values():
                for expression in re.findall(r"%([A-Za-z0-9_]+)%", str(value)):
                    assert expression in always, f"{name}: %{expression}% is not an app setting"


_GOLD = "gold"
_LAKE = "lakeacct"
_APP = "func-x"
_CREATED = f"{_APP}-commit-created"  # BlobCreated -> on_delta_commit (blob trigger)
_RENAMED = f"{_APP}-commit-renamed"  # BlobRenamed -> on_lake_event (Event Grid trigger)
_ENV = {
    "functionAppName": _APP,
    "functionAppHostName": "func-x.azurewebsites.net",
    "blobsExtensionKey": "BLOBKEY",
    "eventGridExtensionKey": "EGKEY",
    "goldContainerName": _GOLD,
    "lakeBlobEndpoint": f"https://{_LAKE}.blob.core.windows.net/",
    "lakeDfsEndpoint": f"https://{_LAKE}.dfs.core.windows.net/",
    "deadLetterStorageAccountId": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/st",
    "deadLetterContainerName": "eventgrid-deadletter",
    "maxDeliveryAttempts": 30,
    "eventTimeToLiveInMinutes": 1440,
    "systemTopicName": "topic",
}


def _subscriptions(env: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    sb = bicep(INFRA / "app" / "lake-subscriptions.bicep")
    found = {}
    for res in sb.resources().values():
        if res.type.startswith("Microsoft.EventGrid/systemTopics/eventSubscriptions@"):
            body = body_object(res.value)
            values = {**_ENV, **(env or {})}
            found[evaluate(entry(body, "name"), values, sb)] = evaluate(entry(body, "properties"), values, sb)
    return found


def _event_value(event: dict[str, Any], key: str) -> Any:
    value: Any = event
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = {k.lower(): v for k, v in value.items()}.get(part.lower())
    return value


def _passes(props: dict[str, Any], event: dict[str, Any]) -> bool:
    """Event Grid filter semantics for the parts the templates use (all ANDed, string operators
    case-insensitive, a key missing from the event fails a positive operator)."""
    f = props["filter"]
    subject = event["subject"].lower()
    if event["eventType"] not in f.get("includedEventTypes", [event["eventType"]]):
        return False
    if not subject.startswith(f.get("subjectBeginsWith", "").lower()):
        return False
    if not subject.endswith(f.get("subjectEndsWith", "").lower()):
        return False
    for adv in f.get("advancedFilters", []):
        value = _event_value(event, adv["key"])
        if not isinstance(value, str):
            return False
        value, values = value.lower(), [v.lower() for v in adv["values"]]
        test = {
            "StringContains": lambda v, vs: any(x in v for x in vs),
            "StringBeginsWith": lambda v, vs: any(v.startswith(x) for x in vs),
            "StringEndsWith": lambda v, vs: any(v.endswith(x) for x in vs),
            "StringIn": lambda v, vs: v in vs,
        }[adv["operatorType"]]
        if not test(value, values):
            return False
    return True


def _created(path: str, api: str = "PutBlob", container: str = _GOLD) -> dict[str, Any]:
    return {"eventType": "Microsoft.Storage.BlobCreated",
            "subject": f"/blobServices/default/containers/{container}/blobs/{path}",
            "data": {"api": api, "url": f"https://{_LAKE}.blob.core.windows.net/{container}/{path}",
                     "eTag": "0x1", "blobType": "BlockBlob"}}


def _renamed(source: str, destination: str, container: str = _GOLD) -> dict[str, Any]:
    return {"eventType": "Microsoft.Storage.BlobRenamed",
            "subject": f"/blobServices/default/containers/{container}/blobs/{destination}",
            "data": {"api": "RenameFile",
                     "sourceUrl": f"https://{_LAKE}.dfs.core.windows.net/{container}/{source}",
                     "destinationUrl": f"https://{_LAKE}.dfs.core.windows.net/{container}/{destination}"}}


_COMMIT = "sales/fact_orders/_delta_log/00000000000000000012.json"
_TMP = "sales/fact_orders/_delta_log/.00000000000000000012.json.3f1c2a.tmp"
_CASES = [
    # event, the subscriptions that must deliver it
    (_created(_COMMIT), {_CREATED}),
    (_created(_COMMIT, api="FlushWithClose"), {_CREATED}),
    (_created(_COMMIT, api="PutBlockList"), {_CREATED}),
    (_created(_COMMIT, api="CopyBlob"), {_CREATED}),
    (_created("a/b/_delta_log/00000000000000000001.json"), {_CREATED}),
    (_created(_COMMIT, api="CreateFile"), set()),  # the 0-byte create before FlushWithClose
    (_created(_TMP, api="FlushWithClose"), set()),  # Spark's temp file
    (_renamed(_TMP, _COMMIT), {_RENAMED}),  # Spark's commit
    (_renamed(_TMP, _COMMIT.replace(".json", ".JSON")), {_RENAMED}),
    (_renamed("x/_delta_log/a.json", "x/_delta_log/a.json.bak"), set()),
    (_renamed("x/part-1.parquet.tmp", "x/part-1.parquet"), set()),
    (_created("sales/fact_orders/part-00000-1.snappy.parquet"), set()),  # data file
    (_created("sales/fact_orders/_delta_log/00000000000000000010.checkpoint.parquet"), set()),
    (_created("sales/fact_orders/_delta_log/_last_checkpoint"), set()),
    (_created("sales/fact_orders/_delta_log/00000000000000000012.crc"), set()),
    (_created("sales/fact_orders/data.json"), set()),  # JSON outside _delta_log/
    (_created("sales/fact_orders/_delta_log_old/00000000000000000012.json"), set()),
    (_renamed("x/a.tmp", "sales/fact_orders/not_delta_log/00000000000000000012.json"), set()),
    (_created(_COMMIT, container="silver"), set()),
    (_created(_COMMIT, container="gold-archive"), set()),
    (_renamed(_TMP, _COMMIT, container="silver"), set()),
    ({**_created(_COMMIT), "eventType": "Microsoft.Storage.BlobDeleted"}, set()),
]


@pytest.mark.parametrize("event, expected", _CASES, ids=lambda x: x["subject"][32:] if isinstance(x, dict) else "")
def test_subscription_filters_pass_exactly_the_commit_events(event, expected):
    subs = _subscriptions()
    assert {name for name, props in subs.items() if _passes(props, event)} == expected


# The delivery rule the local runtime (refresh/dev/local/) reproduces: which function gets which event.
DELIVERY = {"Microsoft.Storage.BlobCreated": "on_delta_commit", "Microsoft.Storage.BlobRenamed": "on_lake_event"}


def test_each_commit_event_has_exactly_one_consumer():
    """One consumer per event kind: a commit is never processed by two functions."""
    subs = _subscriptions()
    for event, expected in _CASES:
        passing = [name for name, props in subs.items() if _passes(props, event)]
        assert len(passing) == len(expected) <= 1, (event["subject"], passing)
        for name in passing:
            url = subs[name]["destination"]["properties"]["endpointUrl"]
            function = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["functionName"][0]
            assert function.removeprefix("Host.Functions.") == DELIVERY[event["eventType"]]


def test_two_environments_on_one_lake_get_distinct_subscriptions():
    """Deploy-on-paper two azd environments (and the same name in two resource groups) against one
    lake: main.bicep's app names, then the subscription names they give, never collide."""
    main = bicep(INFRA / "main.bicep")
    subscription = {"id": "/subscriptions/00000000-0000-0000-0000-000000000000"}
    apps = {}
    for env_name, group in (("dev", "rg-dev"), ("prod", "rg-prod"), ("prod", "rg-prod-2")):
        env = {"environmentName": env_name, "subscription()": subscription,
               "resourceGroup()": {"id": f"{subscription['id']}/resourceGroups/{group}"}}
        apps[(env_name, group)] = evaluate(main.vars()["functionAppName"].value, env, main)
    assert len(set(apps.values())) == 3
    names = {key: set(_subscriptions({"functionAppName": app})) for key, app in apps.items()}
    for key, theirs in names.items():
        assert len(theirs) == 2
        others = set().union(*(n for k, n in names.items() if k != key))
        assert not theirs & others, f"{key} would replace another environment's subscriptions"
        for name in theirs:
            assert len(name) <= 64 and re.fullmatch(r"[A-Za-z0-9-]+", name)
    # The longest app name still gives valid names (Event Grid: at most 64 characters).
    longest = _subscriptions({"functionAppName": "f" * 60})
    assert all(len(name) <= 64 for name in longest) and len(set(longest)) == 2
    # The postdeploy step passes the app name that the subscriptions are named after.
    eg = bicep(INFRA / "eventgrid.bicep")
    params = dict(entry(body_object(eg.modules()["subscriptions"].value), "params").a)
    assert source_of(params["functionAppName"]) == "functionAppName"


def test_subscriptions_target_the_webhooks_with_retries_and_dead_letter():
    subs = _subscriptions()
    base = f"https://{_ENV['functionAppHostName']}/runtime/webhooks"
    urls = {name: props["destination"]["properties"]["endpointUrl"] for name, props in subs.items()}
    assert urls == {
        _CREATED: f"{base}/blobs?functionName=Host.Functions.on_delta_commit&code=BLOBKEY",
        _RENAMED: f"{base}/EventGrid?functionName=on_lake_event&code=EGKEY",
    }
    functions = app_functions()
    for url in urls.values():
        name = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["functionName"][0]
        assert name.removeprefix("Host.Functions.") in functions
    for props in subs.values():
        assert props["destination"]["endpointType"] == "WebHook"
        assert props["retryPolicy"] == {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440}
        dead = props["deadLetterWithResourceIdentity"]
        assert dead["identity"] == {"type": "SystemAssigned"}
        assert dead["deadLetterDestination"]["properties"]["blobContainerName"] == "eventgrid-deadletter"
    # The blob trigger reads data.url, which only BlobCreated has.
    assert subs[_CREATED]["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    assert subs[_RENAMED]["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobRenamed"]
    # Without a dead-letter container there is no dead-letter destination.
    assert all(p["deadLetterWithResourceIdentity"] is None
               for p in _subscriptions({"deadLetterContainerName": ""}).values())


def test_eventgrid_step_runs_in_the_app_group_and_scopes_to_the_topic_group():
    eg = bicep(INFRA / "eventgrid.bicep")
    module = body_object(eg.modules()["subscriptions"].value)
    assert source_of(entry(module, "scope")) == "resourceGroup(systemTopicResourceGroupName)"
    params = dict(entry(module, "params").a)
    keys = "listKeys(functionHost.id, '2024-04-01').systemKeys"
    assert source_of(params["blobsExtensionKey"]) == f"{keys}.blobs_extension"
    assert source_of(params["eventGridExtensionKey"]) == f"{keys}.eventgrid_extension"
    # The template's lake topic: reused by name, or created on the lake account.
    lake = bicep(INFRA / "app" / "lake.bicep")
    topic = lake.resources()["systemTopic"]
    assert source_of(topic.value.a) == "createSystemTopic"
    props = entry(body_object(topic.value), "properties")
    assert source_of(entry(props, "source")) == "lake.id"
    assert literal(entry(props, "topicType")) == "Microsoft.Storage.StorageAccounts"
    main = bicep(INFRA / "main.bicep")
    assert literal(main.params()["lakeSystemTopicName"].value) == ""


# ================================================================================================
# 4. azure.yaml, main.parameters.json, workflows
# ================================================================================================

def _yaml_mapping(text: str) -> dict[str, Any]:
    """Nested mappings of scalars: the subset azure.yaml uses (no lists, no flow style)."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        key, _, value = line.strip().partition(":")
        assert not key.startswith("-"), f"unexpected list in azure.yaml: {raw}"
        while indent <= stack[-1][0]:
            stack.pop()
        parent = stack[-1][1]
        value = value.strip()
        if value:
            parent[key] = {"true": True, "false": False}.get(value, value.strip("'\""))
        else:
            parent[key] = {}
            stack.append((indent, parent[key]))
    return root


def test_azure_yaml_shape():
    spec = _yaml_mapping((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    assert spec["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    assert (ROOT / spec["infra"]["path"] / f"{spec['infra']['module']}.bicep").is_file()
    assert len(spec["services"]) == 1
    (service_name, service), = spec["services"].items()
    # remoteBuild: the Flex build service installs requirements.txt (the hashed lock) on Linux.
    assert service == {"project": ".", "language": "python", "host": "function", "remoteBuild": True}
    tags = entry(body_object(bicep(FUNCTION_BICEP).resources()["functionApp"].value), "tags")
    assert source_of(tags) == "union(tags, obj)"
    assert literal(tags.b[1]) == {"azd-service-name": service_name}
    assert set(spec["hooks"]) == {"postprovision", "postdeploy"}
    for hook, template in (("postprovision", "lake-access.bicep"), ("postdeploy", "eventgrid.bicep")):
        hooks = spec["hooks"][hook]
        for platform, shell in (("posix", "sh"), ("windows", "pwsh")):
            assert hooks[platform]["shell"] == shell
            assert hooks[platform]["continueOnError"] is False
            script = ROOT / hooks[platform]["run"]
            assert script.is_file(), f"{hook} hook {script} is missing"
            assert template in script.read_text(encoding="utf-8")
        assert os.access(ROOT / hooks["posix"]["run"], os.X_OK)
    assert (ROOT / "host.json").is_file() and (ROOT / "requirements.txt").is_file()


def test_parameters_file_matches_main_bicep():
    main = bicep(INFRA / "main.bicep")
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(parameters) <= set(main.params()), set(parameters) - set(main.params())
    required = {n for n, p in main.params().items() if p.value is None}
    assert required <= set(parameters), f"azd cannot fill {required - set(parameters)}"
    for name, spec in parameters.items():
        assert re.fullmatch(r"\$\{[A-Z0-9_]+(=[^}]*)?\}", spec["value"]), f"{name}: values come from the azd env"
    # An input must not share its env name with an output of a different meaning (azd writes
    # outputs back to the env): the reused-topic input is not LAKE_SYSTEM_TOPIC_NAME.
    assert parameters["lakeSystemTopicName"]["value"] == "${LAKE_EXISTING_SYSTEM_TOPIC=}"
    outputs = main.outputs()
    for name, spec in parameters.items():
        env_name = spec["value"][2:-1].split("=")[0]
        if env_name in outputs:
            assert source_of(outputs[env_name].value) == name, f"{env_name}: output differs from input {name}"


def test_ci_workflow_runs_the_project_tests():
    ci = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert re.search(r"^on:\n  pull_request:\n  push:\n    branches: \[main\]", ci, re.M)
    assert 'python-version: "3.11"' in ci and 'node-version: "20"' in ci
    assert "run: ./scripts/test.sh" in ci


def test_ci_deploy_identity_roles_cover_what_the_deploy_path_touches():
    """`azd deploy` runs the postdeploy hook: eventgrid.bicep reads the lake account (an `existing`
    reference with properties, i.e. Microsoft.Storage/storageAccounts/read), lists the host keys in
    the app group and deploys into the topic's group. The documented least roles cover each."""
    eg = bicep(INFRA / "eventgrid.bicep")
    lake = eg.resources()["lakeAccount"]
    assert lake.existing and source_of(entry(lake.value, "scope")) == "resourceGroup(lakeResourceGroupName)"
    params = dict(entry(body_object(eg.modules()["subscriptions"].value), "params").a)
    assert any("lakeAccount.properties" in source_of(v) for v in params.values())
    readme = DOCS.read_text(encoding="utf-8")
    ci = readme[readme.index("### CI/CD"):readme.index("### Static checks")]
    for role, scope in (("**Contributor**", "app resource group"), ("**EventGrid Contributor**", "resource group"),
                        ("**Reader**", "lake storage account")):
        assert re.search(re.escape(role) + r"[^*]*" + re.escape(scope), ci), (role, scope)
    deploy = (ROOT / ".github" / "workflows" / "deploy.yml").read_text()
    assert "Reader on the lake storage account" in deploy


def test_deploy_workflow_uses_oidc_and_no_stored_secrets():
    deploy = (ROOT / ".github" / "workflows" / "deploy.yml").read_text()
    assert "${{ secrets." not in deploy
    assert "id-token: write" in deploy
    assert re.search(r"^  push:\n    branches: \[main\]", deploy, re.M)
    for name in ("client-id", "tenant-id", "subscription-id"):
        assert re.search(rf"{name}: \$\{{\{{ vars\.AZURE_", deploy), name
    assert "--federated-credential-provider github" in deploy
    assert "needs: test" in deploy and "run: ./scripts/test.sh" in deploy
    assert "azd deploy --no-prompt" in deploy


# ================================================================================================
# Scripts, run against a fake `az`
# ================================================================================================

def _fake_az(tmp_path: Path, body: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    az = bin_dir / "az"
    az.write_text("#!/usr/bin/env bash\n"
                  f'printf "%s\\n" "$*" >> "{tmp_path}/az.log"\n' + body)
    az.chmod(az.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)}


_OUTPUTS = {
    "AZURE_FUNCTION_APP_NAME": "func-abc", "AZURE_STORAGE_ACCOUNT_NAME": "stabc",
    "LAKE_STORAGE_ACCOUNT_NAME": "lakeacct", "LAKE_RESOURCE_GROUP": "rg-lake", "GOLD_CONTAINER": "gold",
    "LAKE_SYSTEM_TOPIC_NAME": "lakeacct-events", "LAKE_SYSTEM_TOPIC_RESOURCE_GROUP": "rg-lake",
    "EVENTGRID_DEAD_LETTER_CONTAINER": "eventgrid-deadletter", "MANAGED_IDENTITY_PRINCIPAL_ID": "pid-1",
    "LAKE_SYSTEM_TOPIC_CREATE": "true", "AZURE_FUNCTION_APP_HOSTNAME": "func-abc.azurewebsites.net",
}


def _postdeploy_fake(tmp_path: Path) -> dict[str, str]:
    outputs = "\n".join(f'  *"outputs.{k}.value"*) echo {v} ;;' for k, v in _OUTPUTS.items())
    return _fake_az(tmp_path, f"""
state="{tmp_path}/state"; mkdir -p "$state"
case "$*" in
  "functionapp keys list"*)
    # The host has no extension keys on the first call.
    if [ -e "$state/keys" ]; then echo true; else touch "$state/keys"; echo false; fi ;;
  "deployment group create"*)
    # Webhook validation fails once while the host starts.
    if [ -e "$state/create" ]; then exit 0; else touch "$state/create"; echo "validation failed" >&2; exit 1; fi ;;
  "deployment group show"*)
    case "$*" in
{outputs}
      *) exit 3 ;;
    esac ;;
  *) echo "unexpected az $*" >&2; exit 9 ;;
esac
""")


@pytest.mark.parametrize("mode", ["azd-env", "az-deployment-outputs"])
def test_postdeploy_waits_for_keys_and_retries_eventgrid_deployment(tmp_path, mode):
    env = {**_postdeploy_fake(tmp_path), "AZURE_RESOURCE_GROUP": "rg-app", "KEY_WAIT_SECONDS": "0",
           "RETRY_WAIT_SECONDS": "0"}
    if mode == "azd-env":
        env.update(_OUTPUTS)
    else:
        env["MAIN_DEPLOYMENT_NAME"] = "main"
    # `sh` as azd runs it (dash here: the script must be POSIX).
    done = subprocess.run(["sh", str(INFRA / "scripts" / "postdeploy.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = (tmp_path / "az.log").read_text().splitlines()
    keys = [c for c in calls if c.startswith("functionapp keys list")]
    creates = [c for c in calls if c.startswith("deployment group create")]
    assert len(keys) == 2 and "-g rg-app -n func-abc" in keys[0]
    assert len(creates) == 2
    create = creates[-1]
    assert f"-f {INFRA}/eventgrid.bicep" in create and "-g rg-app" in create
    given = dict(re.findall(r"(\w+)=(\S*)", create))
    eventgrid_params = bicep(INFRA / "eventgrid.bicep").params()
    assert set(given) <= set(eventgrid_params)
    assert {n for n, p in eventgrid_params.items() if p.value is None} <= set(given)
    assert given == {
        "functionAppName": "func-abc", "storageAccountName": "stabc", "lakeStorageAccountName": "lakeacct",
        "lakeResourceGroupName": "rg-lake", "goldContainerName": "gold", "systemTopicName": "lakeacct-events",
        "systemTopicResourceGroupName": "rg-lake", "deadLetterContainerName": "eventgrid-deadletter",
    }
    assert "code=" not in done.stdout + done.stderr


def test_postdeploy_gives_up_when_the_keys_never_appear(tmp_path):
    env = {**_fake_az(tmp_path, 'echo false\n'), **_OUTPUTS, "AZURE_RESOURCE_GROUP": "rg-app",
           "KEY_WAIT_SECONDS": "0", "KEY_WAIT_ATTEMPTS": "3"}
    done = subprocess.run(["sh", str(INFRA / "scripts" / "postdeploy.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "az functionapp function list" in done.stderr
    calls = (tmp_path / "az.log").read_text().splitlines()
    assert len(calls) == 3 and not any(c.startswith("deployment") for c in calls)


def _postprovision(tmp_path: Path, facts: str, container_exists: bool = True) -> subprocess.CompletedProcess:
    """postprovision.sh against a fake az whose lake account shows ``facts`` (isHnsEnabled,
    publicNetworkAccess, networkRuleSet.defaultAction, as the script's query prints them)."""
    env = {**_fake_az(tmp_path, f"""
case "$*" in
  "storage account show"*) echo "{facts}" ;;
  "storage container-rm show"*) {"exit 0" if container_exists else 'echo "ContainerNotFound" >&2; exit 3'} ;;
  "deployment group create"*) exit 0 ;;
  *) echo "unexpected az $*" >&2; exit 9 ;;
esac
"""), **_OUTPUTS, "AZURE_RESOURCE_GROUP": "rg-app"}
    return subprocess.run(["sh", str(INFRA / "scripts" / "postprovision.sh")], env=env, capture_output=True,
                          text=True, timeout=60)


def test_postprovision_deploys_the_lake_side_as_its_own_deployment(tmp_path):
    done = _postprovision(tmp_path, "true Enabled Allow")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr
    calls = (tmp_path / "az.log").read_text().splitlines()
    assert "isHnsEnabled" in calls[0] and "-g rg-lake -n lakeacct" in calls[0]
    create = next(c for c in calls if c.startswith("deployment group create"))
    # Deployed to the APP's resource group, under a name of its own (not azd's deployment).
    assert f"-f {INFRA}/lake-access.bicep" in create and "-g rg-app -n lake-access-func-abc" in create
    given = dict(re.findall(r"(\w+)=(\S*)", create))
    params = bicep(INFRA / "lake-access.bicep").params()
    assert set(given) <= set(params) and {n for n, p in params.items() if p.value is None} <= set(given)
    assert given["identityPrincipalId"] == "pid-1" and given["createSystemTopic"] == "true"
    assert given["lakeResourceGroupName"] == "rg-lake" and given["goldContainerName"] == "gold"


@pytest.mark.parametrize("facts, expected", [
    ("false Enabled Allow", ["no hierarchical namespace", "BlobRenamed", "timer sweep"]),
    ("null Enabled Allow", ["no hierarchical namespace"]),
    ("true Disabled Deny", ["public network access disabled", "VNet integration"]),
    ("true Enabled Deny", ["firewall", "403", "VNet"]),
])
def test_postprovision_warns_about_lake_preconditions(tmp_path, facts, expected):
    done = _postprovision(tmp_path, facts)
    assert done.returncode == 0, done.stdout + done.stderr
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, done.stderr
    for text in expected:
        assert text in warnings[0]
    # A warning does not stop the deployment.
    assert any(c.startswith("deployment group create") for c in (tmp_path / "az.log").read_text().splitlines())


def test_postprovision_stops_on_a_missing_gold_container(tmp_path):
    done = _postprovision(tmp_path, "true Enabled Allow", container_exists=False)
    assert done.returncode == 1
    assert "the gold container 'gold' does not exist in lakeacct" in done.stderr
    assert not any(c.startswith("deployment") for c in (tmp_path / "az.log").read_text().splitlines())


def _remove_fake(tmp_path: Path, topic_tag: str, left: int) -> dict[str, str]:
    scope = "/subscriptions/s/resourceGroups/rg-lake/providers/Microsoft.Storage/storageAccounts/lakeacct"
    assignment = "providers/Microsoft.Authorization/roleAssignments/ra-1"
    return _fake_az(tmp_path, f"""
case "$*" in
  "eventgrid system-topic event-subscription list"*"length(@)"*) echo {left} ;;
  "eventgrid system-topic event-subscription list"*) printf 'func-abc-commit-created\nfunc-abc-commit-renamed\n' ;;
  "eventgrid system-topic event-subscription delete"*) exit 0 ;;
  "storage account show"*) echo "{scope}" ;;
  "role assignment list"*) echo "{scope}/blobServices/default/containers/gold/{assignment}" ;;
  "role assignment delete"*) exit 0 ;;
  "deployment group delete"*) exit 0 ;;
  "eventgrid system-topic show"*) echo "{topic_tag}" ;;
  "eventgrid system-topic delete"*) exit 0 ;;
  *) echo "unexpected az $*" >&2; exit 9 ;;
esac
""")


@pytest.mark.parametrize("tag, left, deleted", [
    ("powerbi-delta-refresh", 0, True),
    ("powerbi-delta-refresh", 2, False),  # another environment still uses the topic
    ("", 0, False),  # a topic this template did not create
])
def test_remove_lake_side_removes_only_this_environment(tmp_path, tag, left, deleted):
    env = {**_remove_fake(tmp_path, tag, left), **_OUTPUTS, "AZURE_RESOURCE_GROUP": "rg-app"}
    done = subprocess.run(["sh", str(INFRA / "scripts" / "remove-lake-side.sh"), "--delete-topic"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = (tmp_path / "az.log").read_text().splitlines()
    listing = next(c for c in calls if c.startswith("eventgrid system-topic event-subscription list"))
    assert "starts_with(name, 'func-abc-commit-')" in listing and "//func-abc.azurewebsites.net/" in listing
    deletes = [c for c in calls if c.startswith("eventgrid system-topic event-subscription delete")]
    assert [re.search(r"-n (\S+)", c).group(1) for c in deletes] == [_OUTPUTS["AZURE_FUNCTION_APP_NAME"] + s
                                                                   for s in ("-commit-created", "-commit-renamed")]
    roles = next(c for c in calls if c.startswith("role assignment list"))
    assert "/blobServices/default/containers/gold" in roles and "principalId=='pid-1'" in roles
    assert any(c.startswith("role assignment delete --ids ") and c.endswith("/ra-1 --only-show-errors -o none")
               for c in calls)
    assert any(c.startswith("eventgrid system-topic delete") for c in calls) is deleted
    # Nothing in the lake is deleted except this environment's pieces: no storage/container/group deletes.
    assert not any(re.match(r"(storage .*delete|group delete)", c) for c in calls)


class _PowerBi(http.server.BaseHTTPRequestHandler):
    """A loopback stand-in for the three Power BI calls the grant script makes."""

    groups = {"Finance Analytics": "11111111-1111-1111-1111-111111111111",
              "O'Brien & Co": "22222222-2222-2222-2222-222222222222",
              "Ops": "33333333-3333-3333-3333-333333333333"}
    users: dict[str, list[dict[str, str]]] = {}
    log: list[tuple[str, str, Any, str]] = []

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.log.append((self.command, self.path, body, self.headers.get("Authorization", "")))
        return urllib.parse.urlsplit(self.path).path, body

    def do_GET(self):
        path, _ = self._record()
        if path == "/v1.0/myorg/groups":
            expr = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["$filter"][0]
            name = re.fullmatch(r"name eq '(.*)'", expr).group(1).replace("''", "'")
            found = [{"id": gid, "name": n} for n, gid in self.groups.items() if n == name]
            return self._reply(200, {"value": found})
        match = re.fullmatch(r"/v1\.0/myorg/groups/([0-9a-f-]+)/users", path)
        return self._reply(200, {"value": self.users.get(match.group(1), [])})

    def do_POST(self):
        self._record()
        self._reply(200, {})

    do_PUT = do_POST


@pytest.fixture
def power_bi():
    _PowerBi.log = []
    _PowerBi.users = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PowerBi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1.0/myorg"
    finally:
        server.shutdown()
        server.server_close()


OBRIEN = "O'Brien & Co"


def test_grant_powerbi_access_adds_raises_and_skips(tmp_path, power_bi):
    principal = "aaaaaaaa-0000-0000-0000-00000000000a"
    _PowerBi.users = {
        _PowerBi.groups[OBRIEN]: [{"identifier": principal.upper(), "principalType": "App",
                                          "groupUserAccessRight": "Viewer"}],
        _PowerBi.groups["Ops"]: [{"identifier": principal, "principalType": "App",
                                  "groupUserAccessRight": "Member"}],
    }
    config = tmp_path / "refresh-config.json"
    config.write_text(json.dumps({"datasets": {
        "sales": {"workspace": "Finance Analytics", "dataset": "Sales Model", "sources": []},
        "partners": {"workspace": "O'Brien & Co", "dataset": "Partners", "sources": []},
        "ops": {"workspace": "Ops", "dataset": "Ops Model", "sources": []},
        "ops2": {"workspace": "Ops", "dataset": "Ops Model 2", "sources": []},
    }}))
    env = {**_fake_az(tmp_path, 'echo "tok-123"\n'), "POWERBI_API_URL": power_bi,
           "MANAGED_IDENTITY_PRINCIPAL_ID": principal}
    done = subprocess.run(["bash", str(INFRA / "scripts" / "grant-powerbi-access.sh"), "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tok-123" not in done.stdout + done.stderr
    az_call = (tmp_path / "az.log").read_text()
    assert "account get-access-token --resource https://analysis.windows.net/powerbi/api" in az_call

    assert all(auth == "Bearer tok-123" for *_, auth in _PowerBi.log)
    gets = [p for m, p, _, _ in _PowerBi.log if m == "GET" and "$filter" in p]
    # Quotes doubled (OData) and the whole expression URL-encoded; each workspace looked up once.
    assert "/v1.0/myorg/groups?$filter=name%20eq%20%27O%27%27Brien%20%26%20Co%27" in gets
    assert len(gets) == 3
    writes = [(m, p, b) for m, p, b, _ in _PowerBi.log if m in ("POST", "PUT")]
    expected_body = {"identifier": principal, "principalType": "App", "groupUserAccessRight": "Contributor"}
    assert writes == [
        ("POST", f"/v1.0/myorg/groups/{_PowerBi.groups['Finance Analytics']}/users", expected_body),
        ("PUT", f"/v1.0/myorg/groups/{_PowerBi.groups[OBRIEN]}/users", expected_body),
    ]
    assert "Ops: already Member, skipped" in done.stdout


def test_grant_powerbi_access_reports_unknown_workspaces(tmp_path, power_bi):
    env = {**_fake_az(tmp_path, 'echo "tok-123"\n'), "POWERBI_API_URL": power_bi}
    done = subprocess.run(["bash", str(INFRA / "scripts" / "grant-powerbi-access.sh"), "--principal-object-id",
                           "bbbbbbbb-0000-0000-0000-00000000000b", "--role", "Member", "Nope", "Ops"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Nope: FAILED" in done.stderr
    writes = [(m, b["groupUserAccessRight"]) for m, _, b, _ in _PowerBi.log if m in ("POST", "PUT")]
    assert writes == [("POST", "Member")]


def test_readme_walkthrough_names_every_parameter_of_main_bicep():
    names = re.findall(r"^param\s+(\w+)", (INFRA / "main.bicep").read_text(encoding="utf-8"), re.M)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("#### Every parameter of `infra/main.bicep`"):]
    assert names and all(f"| `{name}` |" in table for name in names), \
        [n for n in names if f"| `{n}` |" not in table]


# ================================================================================================
# The deployment package: .funcignore leaves out everything that is not runtime code
# ================================================================================================

def _funcignore_patterns() -> list[str]:
    lines = (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "negations are not used (keep the list simple)"
    return patterns


def funcignored(path: str, patterns: list[str]) -> bool:
    """gitignore semantics (what Core Tools and azd apply to .funcignore) for the forms used here:
    `dir/`, `/anchored`, `a/b` (anchored), and globs on one path segment."""
    import fnmatch

    parts = path.split("/")
    for pattern in patterns:
        dir_only = pattern.endswith("/")
        core = pattern.strip("/")
        anchored = pattern.startswith("/") or "/" in core
        for i in range(len(parts)):
            if dir_only and i == len(parts) - 1:
                continue  # a file is not a directory
            target = "/".join(parts[: i + 1]) if anchored else parts[i]
            if fnmatch.fnmatchcase(target, core):
                return True
    return False


def deployment_package() -> list[str]:
    """The repo files (plus local state a developer has, e.g. .local/) that a deploy would ship."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files += [".local/demo/refresh-config.json", ".local/state/azurite/blob.json", ".env",
              ".venv/lib/python3.11/site-packages/x.py", "refresh/__pycache__/app.cpython-311.pyc"]
    patterns = _funcignore_patterns()
    return sorted(f for f in files if not funcignored(f, patterns))


def _is_namespace_package(module: str) -> bool:
    import importlib.util

    if not module or module.split(".")[0] in ("refresh", "function_app"):
        return False
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin in (None, "namespace") and bool(spec.submodule_search_locations)


def _distribution_of(module: str) -> str | None:
    """The installed distribution that provides ``module`` (namespace packages such as azure.*
    resolved by file), canonical name."""
    from importlib.metadata import distribution, packages_distributions

    candidates = packages_distributions().get(module.split(".")[0], [])
    rel = module.replace(".", "/")
    for parts in (rel.split("/")[:n] for n in range(len(rel.split("/")), 0, -1)):
        stem = "/".join(parts)
        for name in candidates:
            files = {str(f) for f in distribution(name).files or []}
            if f"{stem}/__init__.py" in files or f"{stem}.py" in files:
                return re.sub(r"[-_.]+", "-", name).lower()
    return None


def test_deployment_package_holds_runtime_code_only():
    shipped = deployment_package()
    for required in ("function_app.py", "host.json", "requirements.txt", "refresh-config.json",
                     "refresh/__init__.py", "refresh/core/context.py", "refresh/powerbi/client.py"):
        assert required in shipped, f"{required} is not deployed"
    for path in shipped:
        assert not path.startswith((".local/", ".venv/", "tests/", "infra/", "scripts/", "docs/", "benchmarks/",
                                    "refresh/dev/", ".github/")), path
        assert path not in ("requirements-dev.txt", ".env", "local.settings.sample.json", "pyproject.toml",
                            "azure.yaml"), path
        assert not path.endswith(".pyc"), path


def test_deployed_modules_import_only_the_runtime_lock_and_each_other():
    """Every import in a shipped module (module level or inside a function) resolves to the standard
    library, another shipped module, or a distribution in the runtime lock requirements.txt, except
    the dev-only CLI commands named below, which only ``python -m refresh`` reaches."""
    shipped = set(deployment_package())
    lock = set(re.findall(r"^([A-Za-z0-9_.\-]+)==", (ROOT / "requirements.txt").read_text(), re.M))
    lock = {re.sub(r"[-_.]+", "-", n).lower() for n in lock}
    # `python -m refresh local` (refresh/__main__.py) is a developer command; the package leaves
    # refresh/dev/local/ out, and nothing a function runs imports it.
    dev_only_lazy = {("refresh/__main__.py", "refresh.dev.local.cli")}
    problems = []
    for path in sorted(p for p in shipped if p.endswith(".py")):
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        package = path.rsplit("/", 1)[0].replace("/", ".") if "/" in path else ""
        if path.endswith("__init__.py"):
            package = path[: -len("/__init__.py")].replace("/", ".")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [(a.name, True) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    parts = package.split(".")
                    module = ".".join(parts[: len(parts) - node.level + 1] + ([module] if module else []))
                # a namespace package (opentelemetry, azure) has no distribution of its own: the
                # names imported from it are its modules, each checked on its own
                namespace = _is_namespace_package(module)
                names = ([] if namespace else [(module, True)]) + [(f"{module}.{a.name}", namespace)
                                                                   for a in node.names]
            else:
                continue
            for name, is_module in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "__future__":
                    continue
                if top in ("refresh", "function_app"):
                    local = _local_module(name)
                    if local is None:
                        continue  # a name imported from a module, not a module
                    rel = str(local.relative_to(ROOT))
                    if rel not in shipped and (path, name) not in dev_only_lazy:
                        problems.append(f"{path} imports {name}, which is not deployed")
                    continue
                if not is_module:
                    continue  # `from pkg import attr`: pkg was checked
                dist = _distribution_of(name)
                if dist is None or dist not in lock:
                    problems.append(f"{path} imports {name} ({dist or 'not installed'}), not in requirements.txt")
    assert not problems, "\n".join(problems)


# ================================================================================================
# Alert rules (issue 12 item 9): an e-mail action group and three log search alert rules, only when
# alertEmail is set: two on the metrics the app exports, one on the requests rows the Functions host
# writes for the every-minute timer (the app went silent). Their KQL is run here, by a small evaluator
# of the KQL subset they use, on customMetrics rows made by the Azure Monitor exporter's own
# conversion of the app's metrics, and on requests rows shaped as the host writes them.
# ================================================================================================

ALERTS_BICEP = INFRA / "app" / "alerts.bicep"
_RULE_APIS = ("2021-08-01", "2023-03-15-preview")  # GA, and the preview with an optional identity


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside parentheses, brackets and double-quoted strings."""
    parts, depth, quoted, buf = [], 0, False, []
    for c in text:
        if c == '"':
            quoted = not quoted
        elif not quoted and c in "([":
            depth += 1
        elif not quoted and c in ")]":
            depth -= 1
        if c == sep and depth == 0 and not quoted:
            parts.append("".join(buf).strip())
            buf = []
        else:
            buf.append(c)
    parts.append("".join(buf).strip())
    return parts


class _Dims(dict):
    def __missing__(self, key):  # a missing customDimensions key is empty in KQL
        return ""


_KQL_NAMES = {"tostring": lambda v: "" if v is None else str(v), "round": round, "true": True, "false": False}


def _kql_value(expr: str, row: dict[str, Any]) -> Any:
    """One KQL scalar expression of the subset (==, in (...), and, true/false, tostring, round, [..], arithmetic):
    written the same way in Python, so it is evaluated as Python on the row's columns."""
    assert re.fullmatch(r'[\w\s."\[\]()=,/*+\-<>!]*', expr), f"unsupported KQL expression: {expr}"
    return eval(expr, {"__builtins__": {}}, {**_KQL_NAMES, **row})  # noqa: S307 (the template's own text)


def run_kql(query: str, tables: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run a query of the subset the alert rules use: table | where | extend | summarize (sum(),
    arg_max()) by | project. Anything else fails the test (extend the evaluator, or simplify the rule)."""
    stages = [s.strip() for s in query.split("\n|")]
    rows = [dict(r) for r in tables[stages[0]]]
    for stage in stages[1:]:
        verb, _, rest = stage.partition(" ")
        if verb == "where":
            rows = [r for r in rows if _kql_value(rest, r)]
        elif verb in ("extend", "project"):
            out = []
            for r in rows:
                new = dict(r) if verb == "extend" else {}
                for item in _split_top(rest):
                    name, eq, expr = item.partition("=")
                    if eq and not expr.startswith("="):
                        new[name.strip()] = _kql_value(expr.strip(), r)
                    else:
                        new[item] = r[item]
                out.append(new)
            rows = out
        elif verb == "summarize":
            aggs, _, keys = rest.partition(" by ")
            keys_ = _split_top(keys)
            groups: dict[tuple, list[dict[str, Any]]] = {}
            for r in rows:
                groups.setdefault(tuple(r[k] for k in keys_), []).append(r)
            out = []
            for key, members in groups.items():
                row = dict(zip(keys_, key, strict=True))
                for agg in _split_top(aggs):
                    if m := re.fullmatch(r"(\w+) = sum\((\w+)\)", agg):
                        row[m[1]] = sum(x[m[2]] for x in members)
                    elif m := re.fullmatch(r"arg_max\(([\w, ]+)\)", agg):
                        by, *cols = [c.strip() for c in m[1].split(",")]
                        best = max(members, key=lambda x: x[by])
                        row.update({c: best[c] for c in (by, *cols)})
                    else:
                        raise AssertionError(f"unsupported aggregation: {agg}")
                out.append(row)
            rows = out
        else:
            raise AssertionError(f"unsupported KQL operator: {verb}")
    return rows


def _fired(criterion: dict[str, Any], rows: list[dict[str, Any]]) -> dict[tuple, float]:
    """What a log search alert condition does with the query's rows: aggregate per dimension
    combination (timeAggregation of metricMeasureColumn), compare with the threshold. Without
    dimensions there is one series, also when the query returns no rows ("Count of the results table
    rows ... triggers when log records happen or doesn't happen in the evaluated time window", Azure
    Monitor log alerts); with dimensions, a combination without rows has no series and cannot fire."""
    dims = [d["name"] for d in criterion.get("dimensions", [])]
    assert all(d["operator"] == "Include" and d["values"] == ["*"] for d in criterion.get("dimensions", []))
    groups: dict[tuple, list[dict[str, Any]]] = {} if dims else {(): []}
    for r in rows:
        groups.setdefault(tuple(r[d] for d in dims), []).append(r)
    column = criterion.get("metricMeasureColumn")
    aggregate = {"Count": lambda g: len(g), "Total": lambda g: sum(r[column] for r in g)}[criterion["timeAggregation"]]
    compare = {"GreaterThan": lambda a, b: a > b, "GreaterThanOrEqual": lambda a, b: a >= b,
               "LessThan": lambda a, b: a < b}[criterion["operator"]]
    values = {key: aggregate(g) for key, g in groups.items()}
    return {key: v for key, v in values.items() if compare(v, criterion["threshold"])}


def _custom_metrics(reader) -> list[dict[str, Any]]:
    """customMetrics rows as Application Insights stores what the Azure Monitor exporter sends."""
    from azure.monitor.opentelemetry.exporter.export.metrics._exporter import _convert_point_to_envelope

    from refresh.monitoring import metrics as m

    rows = []
    for name, points in m.read_points(reader).items():
        for _, point in points:
            envelope = _convert_point_to_envelope(point, name)
            data = envelope.data.base_data
            [metric] = data.metrics
            rows.append({"name": metric.name, "value": metric.value, "valueSum": metric.value,
                         "valueCount": metric.count, "timestamp": envelope.time,
                         "customDimensions": _Dims(data.properties or {})})
    return rows


def _rules() -> dict[str, dict[str, Any]]:
    bf = bicep(ALERTS_BICEP)
    rules = {}
    for res in bf.resources().values():
        if res.type.startswith("Microsoft.Insights/scheduledQueryRules@"):
            body = body_object(res.value)
            props = entry(body, "properties")
            rules[res.name] = {"api": res.type.split("@")[1], "keys": {k for k, _ in body.a},
                               "body": body, "criteria": evaluate(entry(props, "criteria"), {}, bf)["allOf"],
                               **{k: literal(entry(props, k)) for k in (
                                   "severity", "enabled", "evaluationFrequency", "windowSize", "autoMitigate")}}
    return rules


def test_alerts_exist_only_with_an_alert_email():
    main = bicep(INFRA / "main.bicep")
    assert literal(main.params()["alertEmail"].value) == ""
    module = main.modules()["alerts"]
    assert module.type == "app/alerts.bicep" and module.value.kind == "if"
    condition = module.value.a
    assert evaluate(condition, {"alertEmail": ""}, main) is False
    assert evaluate(condition, {"alertEmail": "data-team@example.com"}, main) is True
    params = entry(body_object(module.value), "params")
    assert source_of(entry(params, "alertEmail")) == "alertEmail"
    # Every resource of alerts.bicep is deployed by that module, so none exists without the e-mail.
    deployed = {name for _, name, _ in _deployed_resources(ALERTS_BICEP)}
    assert deployed == {"actionGroup", "refreshFailed", "freshnessBreached", "appSilent"}
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert parameters["alertEmail"]["value"] == "${ALERT_EMAIL=}"
    readme = DOCS.read_text(encoding="utf-8")
    assert "azd env set ALERT_EMAIL" in readme and "alertEmail=<address>" in readme


def test_action_group_sends_one_email_from_the_parameter():
    bf = bicep(ALERTS_BICEP)
    [group] = [r for r in bf.resources().values() if r.type.startswith("Microsoft.Insights/actionGroups@")]
    body = body_object(group.value)
    assert literal(entry(body, "location")) == "global"
    props = entry(body, "properties")
    short = literal(entry(props, "groupShortName"))
    assert 1 <= len(short) <= 12  # the service's limit
    assert literal(entry(props, "enabled")) is True
    [receiver] = entry(props, "emailReceivers").a
    assert source_of(entry(receiver, "emailAddress")) == "alertEmail"
    assert literal(entry(receiver, "useCommonAlertSchema")) is True
    assert {k for k, _ in props.a} == {"groupShortName", "enabled", "emailReceivers"}  # nothing else notified


def test_alert_rules_are_log_alerts_on_the_component_with_the_action_group_and_no_identity():
    rules = _rules()
    assert set(rules) == {"refreshFailed", "freshnessBreached", "appSilent"}
    bf = bicep(ALERTS_BICEP)
    component = bf.resources()["applicationInsights"]
    assert component.existing and component.type.startswith("Microsoft.Insights/components@")
    for name, rule in rules.items():
        assert rule["api"] in _RULE_APIS, name
        body = rule["body"]
        assert literal(entry(body, "kind")) == "LogAlert"
        assert "identity" not in rule["keys"], f"{name}: no identity (least privilege: nothing to grant)"
        props = entry(body, "properties")
        assert [source_of(s) for s in entry(props, "scopes").a] == ["applicationInsights.id"]
        assert [source_of(a) for a in entry(props, "actions", "actionGroups").a] == ["actionGroup.id"]
        assert rule["enabled"] is True and rule["severity"] in (0, 1, 2, 3, 4)
        for duration in (rule["evaluationFrequency"], rule["windowSize"]):
            assert re.fullmatch(r"PT(1|5|10|15|30|45)M|PT[1-6]H|PT12H|PT24H|P1D", duration), duration
    # A failure is reported once: the window is the evaluation period, and the alert is an event.
    failed = rules["refreshFailed"]
    assert failed["windowSize"] == failed["evaluationFrequency"] and failed["autoMitigate"] is False
    # A breach is a state: it resolves itself when the dataset is fresh again.
    assert rules["freshnessBreached"]["autoMitigate"] is True
    # So is silence: it resolves with the first successful heartbeat; and it is as grave as a failure.
    silent = rules["appSilent"]
    assert silent["autoMitigate"] is True and silent["severity"] == 1
    assert _duration(silent["evaluationFrequency"]) <= _duration(silent["windowSize"])  # no gap between windows
    assert not [r for r in bf.resources().values() if r.type.startswith("Microsoft.Authorization/")]


def test_alert_rule_queries_use_the_apps_metric_names_and_statuses():
    from azure.monitor.opentelemetry.exporter._utils import _filter_custom_properties

    from refresh.jobs.outcomes import Status
    from refresh.monitoring import metrics as m
    from refresh.monitoring.freshness import FAILURE_STATUSES

    rules = _rules()
    [failed] = rules["refreshFailed"]["criteria"]
    [breached] = rules["freshnessBreached"]["criteria"]
    assert f'where name == "{m.REFRESH_OUTCOMES}"' in failed["query"]
    assert f'where name == "{m.FRESHNESS_LAG}"' in breached["query"]
    listed = re.search(r"status in \(([^)]*)\)", failed["query"])[1]
    assert {s.strip().strip('"') for s in listed.split(",")} == set(FAILURE_STATUSES)
    assert FAILURE_STATUSES <= {s.value for s in Status}
    # The exporter writes a bool attribute as str(value): the query compares with that text.
    assert f'breached == "{_filter_custom_properties({"breached": True})["breached"]}"' in breached["query"]


def test_alert_rules_fire_on_failures_and_breaches_from_the_apps_own_metrics():
    from refresh.jobs.outcomes import Status
    from refresh.monitoring import metrics as m
    from refresh.monitoring.freshness import FAILURE_STATUSES

    rules = _rules()
    [failed] = rules["refreshFailed"]["criteria"]
    [breached] = rules["freshnessBreached"]["criteria"]

    metrics, reader = m.in_memory()
    ended = [s.value for s in Status if s not in (Status.QUEUED, Status.WAITING, Status.RUNNING)]
    for status in ended:
        metrics.record_outcome("sales", status, 10.0)
    metrics.record_outcome("hr", "Failed", 3.0)
    metrics.record_outcome("hr", "Failed", 4.0)
    metrics.set_lag("sales", 4000.0, breached=True)
    metrics.set_lag("hr", 30.0, breached=False)
    rows = _custom_metrics(reader)

    fired = _fired(failed, run_kql(failed["query"], {"customMetrics": rows}))
    expected = {("sales", s): 1 for s in ended if s in FAILURE_STATUSES} | {("hr", "Failed"): 2}
    assert fired == expected and ("sales", "Completed") not in fired and ("sales", "Cancelled") not in fired
    result = run_kql(breached["query"], {"customMetrics": rows})
    assert _fired(breached, result) == {("sales",): 1}
    assert result == [{"dataset": "sales", "lag_minutes": 66.7}]

    # Ten minutes on, both datasets are fresh again: the newest value per dataset decides, so the
    # breach alert resolves (autoMitigate) although the older breached value is still in the window.
    metrics.set_lag("sales", 0.0, breached=False)
    later = [dict(r, timestamp=r["timestamp"] + timedelta(minutes=10)) for r in _custom_metrics(reader)
             if r["name"] == m.FRESHNESS_LAG]
    assert _fired(breached, run_kql(breached["query"], {"customMetrics": rows + later})) == {}
    # No outcomes at all: nothing fires.
    assert _fired(failed, run_kql(failed["query"], {"customMetrics": later})) == {}


def _duration(iso: str) -> timedelta:
    m = re.fullmatch(r"PT(\d+)([MH])|P(\d+)D", iso)
    assert m, iso
    if m[3]:
        return timedelta(days=int(m[3]))
    return timedelta(minutes=int(m[1])) if m[2] == "M" else timedelta(hours=int(m[1]))


def _heartbeat_function() -> str:
    return literal(bicep(ALERTS_BICEP).vars()["heartbeatFunction"].value)


def test_app_silent_rule_watches_a_function_the_app_runs_every_minute():
    from datetime import UTC, datetime

    from refresh.core import ncrontab

    name = _heartbeat_function()
    # The name is in one place: the variable, which the query uses.
    assert ALERTS_BICEP.read_text(encoding="utf-8").count(f"'{name}'") == 1
    [criterion] = _rules()["appSilent"]["criteria"]
    assert f'where operation_Name == "{name}" and success == true' in criterion["query"]
    assert "dimensions" not in criterion and "metricMeasureColumn" not in criterion  # one series, rows counted
    assert (criterion["timeAggregation"], criterion["operator"], criterion["threshold"]) == ("Count", "LessThan", 1)
    # function_app.py registers it as a timer, and the host knows it by that name (requests.name and
    # operation_Name are the function's name).
    function = app_functions()[name]
    assert function.file == ROOT / "function_app.py"
    timer = function.decorators["timer_trigger"]
    [binding] = [b for b in runtime_functions()[name] if b["type"] == "timerTrigger"]
    assert binding["schedule"] == timer["schedule"]
    # Its schedule is a literal (not an app setting that could change it) that runs every minute at least,
    # so a window holds many runs and one late or failed run never looks like silence.
    schedule = ncrontab.parse(timer["schedule"])
    at, gaps = schedule.next_after(datetime(2026, 1, 1, tzinfo=UTC)), []
    for _ in range(3 * 24 * 60):
        after = schedule.next_after(at)
        gaps.append(after - at)
        at = after
    window = _duration(_rules()["appSilent"]["windowSize"])
    assert max(gaps) <= timedelta(minutes=1) and window >= 10 * max(gaps)
    # Its requests rows are never sampled away.
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    assert "Request" in host["logging"]["applicationInsights"]["samplingSettings"]["excludedTypes"].split(";")


def _request(function: str, at, success: bool = True) -> dict[str, Any]:
    """A requests row as the Functions host writes one per execution: named after the function."""
    return {"timestamp": at, "name": function, "operation_Name": function, "success": success,
            "resultCode": "0" if success else "1", "itemCount": 1, "cloud_RoleName": "func-app"}


def _window(rows: list[dict[str, Any]], now, rule: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows the service lets the query see: those of the rule's window ending now."""
    return [r for r in rows if now - _duration(rule["windowSize"]) < r["timestamp"] <= now]


def test_app_silent_rule_fires_when_the_heartbeat_stops_or_only_fails_and_resolves_when_it_is_back():
    from datetime import UTC, datetime

    rule = _rules()["appSilent"]
    [criterion] = rule["criteria"]
    name = _heartbeat_function()

    def fired(rows, now) -> bool:
        return _fired(criterion, run_kql(criterion["query"], {"requests": _window(rows, now, rule)})) == {(): 0}

    start = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    minutes = [start + timedelta(minutes=i) for i in range(60)]
    # Healthy: one run a minute, other functions busy too; one failed run among them changes nothing.
    healthy = [_request(name, t) for t in minutes] + [_request("health", t) for t in minutes]
    healthy[30]["success"] = False
    assert not any(fired(healthy, start + timedelta(minutes=m)) for m in range(15, 60))

    # Stopped after the run of 08:29 (plan stopped, crash on start): nothing arrives. A window ending
    # at 08:43 still holds that run; from 08:44 on (window 08:29-08:44, its start excluded) the rule
    # fires, however long the silence lasts.
    stop = start + timedelta(minutes=29)
    stopped = [r for r in healthy if r["timestamp"] <= stop]
    assert not fired(stopped, stop + timedelta(minutes=14))
    assert all(fired(stopped, stop + timedelta(minutes=m)) for m in (15, 20, 60, 600))
    # The same with no telemetry at all, ever (a deployment that never started).
    assert fired([], start)

    # The heartbeat runs but fails every minute (storage unreachable): failed rows are silence too,
    # also while the HTTP functions still answer.
    failing = [dict(r, success=False) if r["name"] == name and r["timestamp"] > stop else r for r in healthy]
    assert not fired(failing, stop + timedelta(minutes=14))
    assert fired(failing, stop + timedelta(minutes=15)) and fired(failing, stop + timedelta(minutes=30))

    # Back: the first successful run in the window resolves it (autoMitigate).
    back = [*failing, _request(name, start + timedelta(minutes=62))]
    assert fired(back, start + timedelta(minutes=61)) and not fired(back, start + timedelta(minutes=65))
    # Only the heartbeat counts: rows of another function (even one named like it) are no heartbeat.
    others = [r for r in healthy if r["name"] != name] + [_request(name + "_x", t) for t in minutes]
    assert fired(others, start + timedelta(minutes=40))


def test_alert_parameter_and_rules_are_documented():
    readme = DOCS.read_text(encoding="utf-8")
    section = readme[readme.index("### Alert rules (Azure Monitor)"):]
    section = " ".join(section[:section.index("\n### ", 5)].split())
    for text in ("refresh.outcomes", "refresh.freshness.lag", "customMetrics", "ALERT_EMAIL", "no managed identity",
                 "refresh-failed", "freshness-breached", "app-silent", f"`{_heartbeat_function()}`", "`requests`",
                 "Without `alertEmail`"):
        assert text in section, text
