"""Who may refresh a dataset that is not configured (an *ad-hoc* refresh): off unless allowed.

Any holder of a function key could otherwise refresh any semantic model the app's identity can
reach. Two places can allow it, and either is enough:

* the app setting ``ADHOC_REFRESH_WORKSPACES``: ``*`` (every workspace) or a comma-separated list of
  workspace names or ids; empty (the default) allows none;
* the routing config's top-level ``adhoc_workspaces``: ``"*"`` or an array of workspace names or ids.

A workspace is matched as the caller names it (case-insensitively): list a workspace by its name to
allow requests that name it, by its id to allow requests that give the id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from refresh.core.validation import MAX_NAME_LENGTH, text_problem

SETTING = "ADHOC_REFRESH_WORKSPACES"
CONFIG_KEY = "adhoc_workspaces"
ALL = "*"


@dataclass(frozen=True)
class AdhocAccess:
    """The workspaces whose unconfigured datasets may be refreshed on request."""

    everything: bool = False
    workspaces: frozenset[str] = frozenset()  # lowercased

    @classmethod
    def of(cls, names: Iterable[str]) -> AdhocAccess:
        names = [n.strip() for n in names if n.strip()]
        if ALL in names:
            return cls(everything=True)
        return cls(workspaces=frozenset(n.lower() for n in names))

    @property
    def enabled(self) -> bool:
        return self.everything or bool(self.workspaces)

    def allows(self, workspace: str) -> bool:
        return self.everything or workspace.strip().lower() in self.workspaces

    def __or__(self, other: AdhocAccess) -> AdhocAccess:
        return AdhocAccess(self.everything or other.everything, self.workspaces | other.workspaces)

    def to_json(self) -> str | list[str] | None:
        """The config value that means the same (None: off)."""
        if self.everything:
            return ALL
        return sorted(self.workspaces) or None


def parse_setting(text: str) -> tuple[AdhocAccess, str | None]:
    """``(access, problem)`` of the app setting's value (``*``, a comma list, or empty)."""
    names = [n.strip() for n in text.split(",")]
    if text.strip() == "":
        return AdhocAccess(), None
    for name in names:
        if name == "":
            return AdhocAccess(), "has an empty item (write * or a comma-separated list of workspace names or ids)"
        problem = text_problem(name, MAX_NAME_LENGTH)
        if problem:
            return AdhocAccess(), f"item {name[:40]!r} {problem}"
    if ALL in names and len(names) > 1:
        return AdhocAccess(), "'*' already allows every workspace; give it alone"
    return AdhocAccess.of(names), None
