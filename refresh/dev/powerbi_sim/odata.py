"""The small OData ``$filter`` subset the simulator understands on ``GET groups``."""

from __future__ import annotations

import re
from collections.abc import Mapping


class ODataFilter:
    """The tiny OData ``$filter`` subset the groups endpoint needs, parsed per the ABNF quoting."""

    _TOKEN = re.compile(
        r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F-]{27})|(?P<word>[A-Za-z_]+)|(?P<sym>[(),]))"
    )

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        text = text.strip()
        while position < len(text):
            match = self._TOKEN.match(text, position)
            if not match or match.end() == position:
                raise ValueError(f"cannot parse $filter at {text[position : position + 20]!r}")
            kind = match.lastgroup or ""
            value = match.group(kind)
            if kind == "str":
                value = value[1:-1].replace("''", "'")
            self.tokens.append((kind, value))
            position = match.end()
            while position < len(text) and text[position].isspace():
                position += 1
        self.position = 0
        self.clauses = self._parse_or()
        if self.position != len(self.tokens):
            raise ValueError("unexpected text after the $filter expression")

    def _next(self) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise ValueError("$filter ends too early")
        token = self.tokens[self.position]
        self.position += 1
        return token

    def _peek_word(self, word: str) -> bool:
        return self.position < len(self.tokens) and self.tokens[self.position] == ("word", word)

    def _parse_or(self) -> list[list[tuple[str, str, str]]]:
        groups = [self._parse_and()]
        while self._peek_word("or"):
            self.position += 1
            groups.append(self._parse_and())
        return groups

    def _parse_and(self) -> list[tuple[str, str, str]]:
        terms = [self._parse_term()]
        while self._peek_word("and"):
            self.position += 1
            terms.append(self._parse_term())
        return terms

    def _parse_term(self) -> tuple[str, str, str]:
        kind, value = self._next()
        if kind == "word" and value == "contains":
            if self._next() != ("sym", "("):
                raise ValueError("contains needs '('")
            _, prop = self._next()
            if self._next() != ("sym", ","):
                raise ValueError("contains needs ','")
            literal_kind, literal = self._next()
            if literal_kind != "str" or self._next() != ("sym", ")"):
                raise ValueError("contains needs a string literal and ')'")
            return self._checked(prop), "contains", literal
        if kind != "word":
            raise ValueError(f"expected a property name, got {value!r}")
        if self._next() != ("word", "eq"):
            raise ValueError("only 'eq' and contains() are supported")
        literal_kind, literal = self._next()
        if literal_kind not in ("str", "guid"):
            raise ValueError("expected a quoted string literal")
        return self._checked(value), "eq", literal

    @staticmethod
    def _checked(prop: str) -> str:
        if prop not in ("name", "id"):
            raise ValueError(f"unsupported property {prop!r} in $filter")
        return prop

    def matches(self, item: Mapping[str, str]) -> bool:
        """True when any ``or`` group has all its terms true."""
        for group in self.clauses:
            ok = True
            for prop, op, literal in group:
                value = item[prop]
                if prop == "id":
                    value, literal = value.lower(), literal.lower()
                if op == "eq" and value != literal:
                    ok = False
                if op == "contains" and literal.lower() not in value.lower():
                    ok = False
            if ok:
                return True
        return False
